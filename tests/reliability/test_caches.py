"""Caches are never stale or left half-built: a source's fingerprint sees an edit that keeps its size and mtime,
a build killed half-way leaves no temporary directory behind the next build, and a binary file named .txt is
refused instead of being read as text."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from cptlab.data import sources
from cptlab.data.sources import file_fingerprint, read_documents, read_documents_with_stats, source_fingerprint
from cptlab.errors import CptlabError
from cptlab.utils.io import build_once


def same_size_same_mtime_edit(path):
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] = ord("X") if data[len(data) // 2] != ord("X") else ord("Y")
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns


def test_fingerprint_sees_an_edit_keeping_size_and_mtime(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("the cat sat on the mat\n" * 100)
    before = source_fingerprint(str(corpus))
    same_size_same_mtime_edit(corpus)
    after = source_fingerprint(str(corpus))
    assert after != before
    assert before[0]["files"][0]["digest"] != after[0]["files"][0]["digest"]  # by content, not only by ctime


def test_large_files_are_fingerprinted_by_samples_and_change_time(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "FULL_HASH_BYTES", 4 << 20)  # stand-in for 64 MiB: a 6 MiB file counts as large
    big = tmp_path / "big.txt"
    big.write_bytes(np.random.default_rng(0).integers(97, 123, size=6 << 20, dtype=np.uint8).tobytes())
    before = file_fingerprint(big)
    assert before["digest"].startswith("sampled:")
    same_size_same_mtime_edit(big)
    after = file_fingerprint(big)
    assert after["ctime_ns"] != before["ctime_ns"] or after["digest"] != before["digest"]
    assert after != before


def test_a_killed_build_leaves_no_temporary_directory_behind_the_next(tmp_path):
    final = tmp_path / "cache" / "tokens" / "en-abc"
    script = ("import sys, time; from pathlib import Path; from cptlab.utils.io import build_once\n"
              "def build(tmp):\n    (tmp / 'part.bin').write_bytes(b'x' * 1000); time.sleep(120)\n"
              f"build_once(Path({str(final)!r}), build)\n")
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 60
        while not list(final.parent.glob(".en-abc.*.tmp/part.bin")):
            assert time.monotonic() < deadline and proc.poll() is None, "the build never started"
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert list(final.parent.glob(".en-abc.*.tmp"))  # what the kill left
    build_once(final, lambda tmp: (tmp / "part.bin").write_bytes(b"y"))
    assert (final / "part.bin").read_bytes() == b"y"
    assert not list(final.parent.glob(".en-abc.*.tmp"))


def test_binary_file_named_txt_is_refused_naming_it(tmp_path):
    blob = tmp_path / "photo.txt"
    blob.write_bytes(np.random.default_rng(0).integers(0, 256, size=50_000, dtype=np.uint8).tobytes())
    with pytest.raises(CptlabError, match=r"photo\.txt: .* lines are not UTF-8 text .* binary"):
        read_documents(str(blob))
    utf16 = tmp_path / "utf16.txt"
    utf16.write_bytes("\n".join(f"line {i} of text" for i in range(50)).encode("utf-16"))
    with pytest.raises(CptlabError, match="binary"):
        read_documents(str(utf16))


def test_a_few_bad_lines_are_still_accepted_and_counted(tmp_path):
    text = tmp_path / "mostly_good.txt"
    text.write_bytes(b"\n".join(f"good line {i}".encode() + (b" \xff" if i in (3, 9) else b"") for i in range(100)))
    docs, stats = read_documents_with_stats(str(text))
    assert len(docs) == 100 and stats["bad_text_replaced"] == 2

"""Corpora bigger than memory: compressed and sharded sources, block-wise reading, and the streamed
train/held-out split (the same documents on each side as `split_documents` of the whole list)."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
import zstandard

from cptlab.data import sources
from cptlab.data.sources import iter_documents, read_documents, read_documents_with_stats
from cptlab.data.split import split_documents
from cptlab.data.tokens import DomainSpec, heldout_rule, load_domain_documents, train_documents
from cptlab.errors import CptlabError

DOCS = ["first doc", "二 second", "third\twith tab", "fourth  spaced", "five 5", "six"]


def jsonl_bytes(docs) -> bytes:
    return "".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs).encode()


def txt_bytes(docs) -> bytes:
    return ("\n".join(docs) + "\n").encode()


def compress(data: bytes, kind: str) -> bytes:
    return gzip.compress(data) if kind == "gz" else zstandard.ZstdCompressor().compress(data)


@pytest.mark.parametrize("kind", ["gz", "zst"])
@pytest.mark.parametrize("fmt", ["txt", "jsonl"])
def test_compressed_files_read_like_plain_ones(tmp_path, kind, fmt):
    data = jsonl_bytes(DOCS) if fmt == "jsonl" else txt_bytes(DOCS)
    (tmp_path / f"plain.{fmt}").write_bytes(data)
    (tmp_path / f"packed.{fmt}.{kind}").write_bytes(compress(data, kind))
    assert read_documents(str(tmp_path / f"packed.{fmt}.{kind}")) == read_documents(str(tmp_path / f"plain.{fmt}"))
    assert read_documents(str(tmp_path / f"packed.{fmt}.{kind}")) == DOCS


def test_directory_and_glob_of_shards(tmp_path):
    shards = tmp_path / "shards"
    (shards / "sub").mkdir(parents=True)
    (shards / "a-00.jsonl.gz").write_bytes(compress(jsonl_bytes(DOCS[:2]), "gz"))
    (shards / "a-01.txt.zst").write_bytes(compress(txt_bytes(DOCS[2:4]), "zst"))
    (shards / "b.txt").write_text("a whole file\nis one document")  # plain .txt in a directory: one document
    (shards / "sub" / "c.jsonl").write_bytes(jsonl_bytes(DOCS[4:]))
    (shards / "notes.md").write_text("ignored")
    (shards / ".hidden.jsonl").write_bytes(jsonl_bytes(["tool state"]))
    assert read_documents(str(shards)) == [*DOCS[:4], "a whole file\nis one document", *DOCS[4:]]
    assert read_documents(str(shards / "a-*")) == DOCS[:4]
    assert len(sources.source_fingerprint(str(shards))) == 4  # one entry per shard


def test_corrupt_and_truncated_archives_are_one_line_naming_the_file(tmp_path):
    garbage = tmp_path / "garbage.jsonl.gz"
    garbage.write_bytes(b"this is not gzip at all\n" * 10)
    truncated = tmp_path / "truncated.txt.zst"
    truncated.write_bytes(compress(txt_bytes(DOCS * 2000), "zst")[:-40])
    cut_gzip = tmp_path / "cut.txt.gz"
    cut_gzip.write_bytes(compress(txt_bytes(DOCS * 2000), "gz")[:200])
    for path, name in ((garbage, "gzip"), (truncated, "zstandard"), (cut_gzip, "gzip")):
        with pytest.raises(CptlabError) as e:
            read_documents(str(path))
        message = str(e.value)
        assert "\n" not in message and message.startswith(f"{path}: not a readable {name} archive"), message


def test_unsupported_suffixes_are_one_line(tmp_path):
    for name in ("data.csv.gz", "data.txt.bz2", "data.gz"):
        (tmp_path / name).write_bytes(b"x")
        with pytest.raises(CptlabError) as e:
            read_documents(str(tmp_path / name))
        assert "\n" not in str(e.value) and str(e.value).startswith("unsupported data source suffix"), str(e.value)
    assert "'.csv.gz'" in str(pytest.raises(CptlabError, read_documents, str(tmp_path / "data.csv.gz")).value)


def test_reading_in_tiny_blocks_gives_the_same_documents_and_line_numbers(tmp_path, monkeypatch):
    text = tmp_path / "mixed.txt"
    text.write_bytes(b"\xef\xbb\xbfbom first\r\nsecond\n\nfourth \xff bad\nfifth\xe4\xb8\xad\nlast without newline")
    jsonl = tmp_path / "records.jsonl.gz"
    jsonl.write_bytes(compress(jsonl_bytes(DOCS) + b'{"text": 3}\n', "gz"))
    whole = read_documents_with_stats(str(text))
    with pytest.raises(CptlabError, match=r"records\.jsonl\.gz:7: field 'text' is a number"):
        read_documents(str(jsonl))
    monkeypatch.setattr(sources, "READ_BLOCK", 5)
    assert read_documents_with_stats(str(text)) == whole
    assert whole[0] == ["bom first", "second", "fourth \ufffd bad", "fifth中", "last without newline"]
    with pytest.raises(CptlabError, match=r"mixed\.txt:4: invalid UTF-8"):
        read_documents(str(text), on_bad_text="error")
    with pytest.raises(CptlabError, match=r"records\.jsonl\.gz:7: field 'text' is a number"):
        read_documents(str(jsonl))


def test_a_binary_file_is_refused_from_its_first_block(tmp_path, monkeypatch):
    blob = tmp_path / "blob.txt.gz"
    blob.write_bytes(compress(np.random.default_rng(0).integers(0, 256, 200_000, dtype=np.uint8).tobytes(), "gz"))
    monkeypatch.setattr(sources, "READ_BLOCK", 4096)
    documents = iter_documents(str(blob))
    with pytest.raises(CptlabError, match=r"blob\.txt\.gz: .* lines are not UTF-8 text .* binary"):
        next(documents)  # before any document is handed on


def corpus_file(tmp_path, n=400, name="c.jsonl.gz"):
    rng = np.random.default_rng(1)
    docs = [f"doc {i} " + " ".join(rng.choice(list("abcdefg"), size=5)) for i in range(n)]
    docs += docs[:30]  # copies stay on the side of their original
    path = tmp_path / name
    path.write_bytes(compress(jsonl_bytes(docs), "gz"))
    return path, docs


@pytest.mark.parametrize("heldout", [0.1, 0.5, 0.0001, 7, 1])
def test_streamed_split_equals_the_split_of_the_whole_list(tmp_path, heldout):
    path, docs = corpus_file(tmp_path)
    spec = DomainSpec("toy", "new", (str(path),), heldout=heldout)
    for seed in (0, 3):
        train, val, stats = load_domain_documents(spec, seed=seed)
        assert (train, val) == split_documents(docs, heldout, seed)
        assert stats["docs_read"] == len(docs)
        rule = heldout_rule(spec, seed=seed)
        assert [d for d in docs if rule(d)] == val
        assert list(train_documents(spec, seed=seed)) == train


def test_streamed_split_errors_match_the_list_split(tmp_path):
    path = tmp_path / "few.txt"
    path.write_text("a\nb\nc\n")
    with pytest.raises(CptlabError, match=r"data.domains.x.heldout: cannot hold out 3 documents from 3 documents "
                                          r"\(3 distinct\): the training side would be empty"):
        load_domain_documents(DomainSpec("x", "new", (str(path),), heldout=3))
    one = tmp_path / "one.txt"
    one.write_text("only\nonly\n")
    with pytest.raises(CptlabError, match="training side would be empty"):
        load_domain_documents(DomainSpec("x", "new", (str(one),), heldout=0.5))


def test_tokenizer_sample_is_capped_in_bytes(tmp_path):
    path, docs = corpus_file(tmp_path)
    spec = DomainSpec("toy", "new", (str(path),), heldout=0.1)
    train = load_domain_documents(spec)[0]
    sample = list(train_documents(spec, max_bytes=500))
    assert sample == train[: len(sample)] and 0 < sum(len(d.encode()) for d in sample) <= 500
    assert len(sample) < len(train)
    assert sum(len(d.encode()) for d in train[: len(sample) + 1]) > 500  # the next document would not fit
    assert list(train_documents(spec, max_bytes=10**9)) == train  # a cap above the corpus changes nothing
    assert list(train_documents(spec, max_bytes=1)) == train[:1]  # at least one document


def test_multi_frame_zstd_reads_every_frame(tmp_path):
    # zstd -T / pzstd write several frames; each must be read, and a cut inside one is an error.
    frames = compress(txt_bytes(DOCS[:3]), "zst") + compress(txt_bytes(DOCS[3:]), "zst")
    (tmp_path / "multi.txt.zst").write_bytes(frames)
    assert read_documents(str(tmp_path / "multi.txt.zst")) == DOCS
    (tmp_path / "cut.txt.zst").write_bytes(frames[:-3])
    with pytest.raises(CptlabError, match=r"cut\.txt\.zst: not a readable zstandard archive"):
        read_documents(str(tmp_path / "cut.txt.zst"))


def test_max_train_bytes_is_validated(compose_cfg, tmp_path):
    from cptlab.run.validate import validate

    (tmp_path / "a.txt").write_text("one\ntwo\n")
    base = ["data=files", f"data.domains.new.sources=[{tmp_path / 'a.txt'}]",
            f"data.domains.old.sources=[{tmp_path / 'a.txt'}]", "tokenizer=train"]
    assert compose_cfg(base).tokenizer.max_train_bytes == 1 << 30
    with pytest.raises(CptlabError, match=r"tokenizer.max_train_bytes=0 must be >= 1 \(bytes; null: no cap\)"):
        validate(compose_cfg([*base, "tokenizer.max_train_bytes=0"]))
    validate(compose_cfg([*base, "tokenizer.max_train_bytes=null"]))

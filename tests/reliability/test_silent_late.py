"""Issue #26, "silent or late": what used to work for minutes before failing, or finished without a word, or
failed with a traceback, now stops early with one line naming the file, key or run at fault.

9: a document larger than data.max_doc_bytes (a file without line breaks) is refused once that many bytes
of it are read. 10: cptlab-export / cptlab-merge refuse a run that did not complete; merge --out writes the
split file as export does; optim.lr_scale.new_rows without a vocabulary extension is refused. 11: a truncated
GGUF, a bad cptlab-prepare override, a full disk, SIGTERM and symlinked cache entries are one line each.
12: a sweep with one bad value is refused before its first job trains.
"""

from __future__ import annotations

import errno
import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cptlab.errors import CptlabError

ROOT = Path(__file__).resolve().parents[2]


def run_python(*args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**environ, **(env or {})})
    return proc


@pytest.fixture(scope="module")
def corpora(tmp_path_factory, rel):
    d = tmp_path_factory.mktemp("corpora")
    return rel.write_corpus(d / "new.txt", 300, 0), rel.write_corpus(d / "old.txt", 300, 1, " old")


# -- 9: one document larger than data.max_doc_bytes -----------------------------------------------------------

def one_line_file(path: Path, size: int) -> Path:
    path.write_bytes(b"word " * (size // 5))
    return path


@pytest.mark.parametrize("suffix", [".txt", ".jsonl", ".txt.gz"])
def test_a_line_over_max_doc_bytes_is_refused_after_reading_that_much(tmp_path, suffix):
    from cptlab.data.sources import iter_documents

    path = tmp_path / f"corpus{suffix}"
    lines = [b"a short first document", b"word " * (3 << 20) if suffix != ".jsonl"
             else json.dumps({"text": "word " * (3 << 20)}).encode()]
    if suffix == ".jsonl":
        lines[0] = json.dumps({"text": lines[0].decode()}).encode()
    data = b"\n".join(lines) + b"\n"
    path.write_bytes(gzip.compress(data, 1) if suffix.endswith(".gz") else data)
    started = time.monotonic()
    with pytest.raises(CptlabError) as info:
        list(iter_documents(str(path), max_doc_bytes=1 << 20))
    assert time.monotonic() - started < 5
    message = str(info.value)
    assert f"{path}:2:" in message and "data.max_doc_bytes=1048576" in message and "\n" not in message
    # under the cap, the same file reads whole
    assert len(list(iter_documents(str(path), max_doc_bytes=None))) == 2


def test_the_default_cap_refuses_a_file_without_line_breaks_fast(tmp_path):
    from cptlab.config import DataConfig, check_value
    from cptlab.data.sources import MAX_DOC_BYTES, iter_documents

    assert MAX_DOC_BYTES == DataConfig.max_doc_bytes == 8 << 20
    with pytest.raises(CptlabError, match=r"data.max_doc_bytes=0 must be >= 1"):
        check_value("data.max_doc_bytes", 0)
    path = one_line_file(tmp_path / "dump.txt", 40 << 20)  # 40 MB, one line
    started = time.monotonic()
    with pytest.raises(CptlabError, match=rf"{path}:1: a line of more than {8 << 20} bytes exceeds data.max_doc_bytes"):
        next(iter_documents(str(path)))
    assert time.monotonic() - started < 5


def test_a_whole_file_document_or_a_row_over_the_cap_is_refused(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from cptlab.data.sources import iter_documents

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("small document\n")
    one_line_file(docs / "b.txt", 5000)
    with pytest.raises(CptlabError, match=rf"{docs / 'b.txt'}: a file of 5000 bytes exceeds data.max_doc_bytes=4096"):
        list(iter_documents(str(docs), max_doc_bytes=4096))
    table = tmp_path / "t.parquet"
    pq.write_table(pa.table({"text": ["short", "x" * 5000, "short"]}), table)
    with pytest.raises(CptlabError, match=rf"{table}: row 1: a row of 5000 bytes exceeds data.max_doc_bytes=4096"):
        list(iter_documents(str(table), max_doc_bytes=4096))


def test_cli_refuses_a_long_line_before_any_cache_naming_file_and_key(cptlab_train, corpora, rel, tmp_path):
    _, old = corpora
    big = tmp_path / "big.txt"
    big.write_bytes(b"first document\n" + b"word " * (2 << 20) + b"\n")
    run_dir = tmp_path / "run"
    proc = cptlab_train(*rel.tiny_run(big, old, run_dir, "data.max_doc_bytes=100000"))
    line = rel.error_line(proc)
    assert f"{big}:2:" in line and "data.max_doc_bytes=100000" in line, line
    assert proc.elapsed < 60
    tokens = cptlab_train.cache_dir / "tokens"
    assert not tokens.exists() or not any(tokens.iterdir())
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "failed"


# -- 10: export / merge of a run that did not complete; merge --out's split file; lr_scale.new_rows -------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory, corpora, train_cli, rel):
    """A completed tiny run (and its cache)."""
    base = tmp_path_factory.mktemp("trained")
    new, old = corpora
    train = train_cli(base / "cache")
    run_dir = base / "run"
    proc = train(*rel.tiny_run(new, old, run_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir, base / "cache", rel.tiny_run(new, old, run_dir)


def failed_copy(run_dir: Path, dest: Path) -> Path:
    shutil.copytree(run_dir, dest, symlinks=True)
    summary = json.loads((dest / "summary.json").read_text())
    summary.update(status="failed", error="interrupted by SIGTERM at step 1; checkpoint saved")
    (dest / "summary.json").write_text(json.dumps(summary))
    return dest


@pytest.mark.parametrize("prog", ["cptlab-export", "cptlab-merge"])
def test_export_and_merge_refuse_a_failed_run_in_one_line(trained, tmp_path, capsys, prog):
    from cptlab.cli import export, merge

    run_dir = failed_copy(trained[0], tmp_path / "failed")
    out = tmp_path / "out"
    main = export.main if prog == "cptlab-export" else merge.main
    args = [str(run_dir), "--out", str(out)] + (["--alpha", "0.5"] if prog == "cptlab-merge" else [])
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 2
    [line] = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert line.startswith(f"{prog}: error: {run_dir} did not complete (summary.json: status failed: interrupted")
    assert "--allow-incomplete" in line
    assert not out.exists()


def test_allow_incomplete_exports_a_failed_run_and_merge_out_writes_the_split(trained, tmp_path, capsys):
    from cptlab.cli import export
    from cptlab.model.save import SPLIT_FILE
    from cptlab.run.merge import export_merge

    run_dir = failed_copy(trained[0], tmp_path / "failed")
    export.main([str(run_dir), "--out", str(tmp_path / "forced"), "--allow-incomplete"])
    assert (tmp_path / "forced" / "config.json").is_file()
    assert "error" not in capsys.readouterr().err
    unrecorded = tmp_path / "unrecorded"  # killed before it wrote summary.json: exported, and said so
    shutil.copytree(trained[0], unrecorded, symlinks=True)
    (unrecorded / "summary.json").unlink()
    export.main([str(unrecorded), "--out", str(tmp_path / "as_is")])
    err = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert err == [f"cptlab-export: warning: {unrecorded} has no summary.json (killed before its end, or still "
                   "running): using its last checkpoint as it is"]
    exported = export.export_run(trained[0], tmp_path / "export")
    merged = export_merge(trained[0], 0.5, tmp_path / "merged")
    split = json.loads((exported / SPLIT_FILE).read_text())
    assert split == json.loads((trained[0] / "summary.json").read_text())["split"]
    assert json.loads((merged / SPLIT_FILE).read_text()) == split


def test_lr_scale_new_rows_without_extension_is_refused(compose_cfg, corpora, rel):
    from cptlab.run.validate import validate

    overrides = [a for a in rel.tiny_run(*corpora, "unused") if not a.startswith("hydra.")]
    with pytest.raises(CptlabError, match=r"optim.lr_scale.new_rows=10 scales the new token rows, which only "
                                          r"tokenizer=extend adds \(tokenizer.kind=train\)"):
        validate(compose_cfg([*overrides, "optim.lr_scale.new_rows=10"]))
    validate(compose_cfg([*overrides, "optim.lr_scale.embeddings=2"]))  # the other scales need no extension


# -- 11: one line instead of a traceback ------------------------------------------------------------------------

def test_data_files_without_replay_sources_says_how_to_drop_the_domain(compose_cfg, corpora):
    from cptlab.run.validate import validate

    with pytest.raises(CptlabError) as info:
        validate(compose_cfg(["data=files", f"data.domains.new.sources=[{corpora[0]}]"]))
    assert str(info.value) == ("data.domains.old.sources is not set (??? in the config): give "
                               "data.domains.old.sources=[PATH,...], or drop the replay domain with "
                               "~data.domains.old and data.replay_ratio=0")


def write_gguf(path: Path) -> Path:
    import numpy as np

    gguf = pytest.importorskip("gguf")
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    for i in range(4):
        writer.add_tensor(f"blk.0.t{i}.weight", np.ones((64, 64), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize("keep", [0.9, 0.3, 0.001])
def test_a_truncated_gguf_is_refused_at_validation(compose_cfg, tmp_path, keep):
    from cptlab.model.gguf import check_gguf
    from cptlab.run.validate import validate

    whole = write_gguf(tmp_path / "whole.gguf")
    check_gguf(str(whole))
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(whole.read_bytes()[: int(whole.stat().st_size * keep)])
    with pytest.raises(CptlabError) as info:
        validate(compose_cfg(["tokenizer=train", f"model.gguf={cut}"]))
    assert str(info.value).startswith(f"model.gguf={cut}: {cut} is not a readable GGUF file (truncated or damaged?")
    assert "\n" not in str(info.value)


def test_prepare_with_a_bad_override_is_one_line(tmp_path):
    proc = run_python("-m", "cptlab.cli.prepare", "debug=smoke", "prepare.tokenizer_only=maybe",
                      env={"CPTLAB_RUNS": str(tmp_path / "runs"), "CPTLAB_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == ("cptlab-prepare: error: Error merging override prepare.tokenizer_only=maybe: "
                                   "Value 'maybe' is not a valid bool (type str)")
    assert not (tmp_path / "runs").exists()


def enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_names_the_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    from cptlab.utils import io

    target = tmp_path / "summary.json"
    io.atomic_write_json(target, {"status": "completed"})
    monkeypatch.setattr(io.os, "fsync", enospc)
    with pytest.raises(CptlabError, match=rf"^{target}: no space left on device: free space there"):
        io.atomic_write_json(target, {"status": "failed"})
    assert json.loads(target.read_text()) == {"status": "completed"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]  # no temporary file left


def test_a_full_disk_during_a_cache_build_names_the_entry(tmp_path):
    from cptlab.utils.io import build_once

    entry = tmp_path / "tokens" / "new-0123"
    with pytest.raises(CptlabError, match=rf"^{entry}: no space left on device"):
        build_once(entry, enospc)
    assert not entry.exists() and [p.name for p in entry.parent.iterdir()] == ["new-0123.lock"]


def test_cli_full_disk_writing_metrics_is_one_line_naming_the_file(corpora, rel, tmp_path):
    """Fault injection: every write of metrics.csv finds the disk full (its fsync fails with ENOSPC)."""
    run_dir = tmp_path / "run"
    code = ("import errno, os, sys\n"
            "real = os.fsync\n"
            "def fsync(fd):\n"
            "    if os.path.basename(os.readlink(f'/proc/self/fd/{fd}')).startswith('.metrics.csv.'):\n"
            "        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))\n"
            "    return real(fd)\n"
            "os.fsync = fsync\n"
            "from cptlab.cli.train import train_main\n"
            "sys.argv = ['cptlab-train', *sys.argv[1:]]\n"
            "train_main()\n")
    proc = run_python("-c", code, *rel.tiny_run(*corpora, run_dir), env={"CPTLAB_CACHE": str(tmp_path / "cache")})
    line = rel.error_line(proc)
    assert line == (f"cptlab-train: error: {run_dir / 'metrics.csv'}: no space left on device: free space there (or "
                    "point paths.cache_dir / CPTLAB_CACHE, CPTLAB_RUNS elsewhere) and re-run the command")
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "failed"


def test_sigterm_outside_training_is_one_line_and_records_the_run(corpora, rel, tmp_path):
    """The run reads a source that is a FIFO nobody writes: it blocks (fingerprinting its inputs) until SIGTERM."""
    fifo = tmp_path / "stuck.txt"
    os.mkfifo(fifo)
    run_dir = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env["CPTLAB_CACHE"] = str(tmp_path / "cache")
    proc = subprocess.Popen([sys.executable, "-m", "cptlab.cli.train_app", *rel.tiny_run(fifo, corpora[1], run_dir)], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (run_dir / ".hydra").is_dir() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        time.sleep(3)  # past validation, into the job (it blocks on the FIFO for good)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    proc.stderr, proc.stdout = stderr, stdout
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert rel.error_line(proc) == "cptlab-train: error: interrupted by SIGTERM: re-run the same command to continue"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and "interrupted by SIGTERM" in summary["error"]


@pytest.mark.parametrize("in_job, expected", [(False, "x: error: interrupted by SIGTERM"),
                                              (True, "Interrupted: interrupted by SIGTERM")])
def test_sigterm_handler_exits_at_once_outside_a_job_and_raises_inside(in_job, expected):
    code = ("import os, signal, sys, time\n"
            "from cptlab.errors import Interrupted, in_job, interrupt_on_signals\n"
            f"interrupt_on_signals('x'); in_job({in_job})\n"
            "try:\n"
            "    os.kill(os.getpid(), signal.SIGTERM); time.sleep(5)\n"
            "except Interrupted as err:\n"
            "    print(f'Interrupted: {err}', file=sys.stderr); sys.exit(err.exit_status)\n")
    proc = run_python("-c", code, timeout=60)
    assert proc.returncode == 143 and proc.stderr.startswith(expected) and len(proc.stderr.splitlines()) == 1


def test_a_symlinked_cache_entry_is_used_when_complete_and_refused_otherwise(tmp_path):
    from cptlab.utils.io import COMPLETE_MARKER, build_once

    shared = tmp_path / "shared"
    (shared / "entry").mkdir(parents=True)
    (shared / "entry" / "data").write_text("shared")
    cache = tmp_path / "cache"
    cache.mkdir()
    link = cache / "entry"
    link.symlink_to(shared / "entry")

    def never(tmp):
        raise AssertionError("built through a complete entry")

    (shared / "entry" / COMPLETE_MARKER).write_text("ok\n")
    assert build_once(link, never) == link  # complete: used as it is
    (shared / "entry" / COMPLETE_MARKER).unlink()
    with pytest.raises(CptlabError, match=rf"^cache entry {link} is a symbolic link to {shared / 'entry'}, which is "
                                          "not a complete cptlab cache entry: remove the link"):
        build_once(link, lambda tmp: (tmp / "data").write_text("new"))
    assert (shared / "entry" / "data").read_text() == "shared" and link.is_symlink()  # the target is untouched
    dangling = cache / "gone"
    dangling.symlink_to(tmp_path / "unmounted" / "gone")
    with pytest.raises(CptlabError, match=rf"^cache entry {dangling} is a symbolic link"):
        build_once(dangling, lambda tmp: None)
    assert not any(p.name.endswith(".tmp") for p in cache.iterdir())


def test_cli_with_a_dangling_cache_link_is_one_line(trained, train_cli, rel, tmp_path):
    run_dir, cache, overrides = trained
    copy = tmp_path / "cache"
    shutil.copytree(cache, copy, symlinks=True)
    entry = next(p for p in (copy / "tokens").iterdir() if p.name.startswith("new-") and p.is_dir())
    shutil.rmtree(entry)
    entry.symlink_to(tmp_path / "unmounted" / entry.name)
    again = [o for o in overrides if not o.startswith("hydra.run.dir=")] + [f"hydra.run.dir={tmp_path / 'run'}"]
    line = rel.error_line(train_cli(copy)(*again))
    assert f"cache entry {entry} is a symbolic link to {tmp_path / 'unmounted' / entry.name}" in line


# -- 12: every job of a sweep validated before the first one starts ----------------------------------------------

def test_a_sweep_with_one_bad_value_trains_nothing(cptlab_train, corpora, rel, tmp_path):
    sweep_dir = tmp_path / "sweep"
    args = [a for a in rel.tiny_run(*corpora, tmp_path / "unused") if not a.startswith("hydra.run.dir=")]
    proc = cptlab_train("-m", *args, "optim.lr=1e-3,-1", f"hydra.sweep.dir={sweep_dir}")
    line = rel.error_line(proc)
    assert line == ("cptlab-train: error: job 2 of 2 (optim.lr=-1): optim.lr=-1.0 must be > 0 (no job was "
                    "started)"), line
    assert not sweep_dir.exists() and not cptlab_train.cache_dir.exists()


def test_the_jobs_of_a_sweep_are_hydras(compose_cfg):
    from cptlab.run.sweep import first_sweep_point, job_overrides
    from cptlab.utils.console import CONF_DIR

    overrides = ["experiment=replay_sweep", "debug=smoke", "adapter.r=2,8", "seed=range(2)"]
    cfg = compose_cfg(first_sweep_point(overrides), hydra_node=True, config_dir=CONF_DIR)
    jobs = job_overrides(cfg, overrides)
    assert len(jobs) == 8  # replay_ratio (the experiment's params) x adapter.r (the command line wins) x seed
    assert jobs[0] == ["data.replay_ratio=0.0", "adapter.r=2", "experiment=replay_sweep", "debug=smoke", "seed=0"]
    assert jobs[-1] == ["data.replay_ratio=0.25", "adapter.r=8", "experiment=replay_sweep", "debug=smoke", "seed=1"]

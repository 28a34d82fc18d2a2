"""A run directory is never silently continued with other inputs, shared by two processes, or resumed from a
damaged or misfitting checkpoint; unwritable places are named. Each refusal is one line, no traceback, and the
run directory is left byte for byte as it was (Hydra has not even started: no log line, no .hydra rewrite)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest


@pytest.fixture(scope="module")
def done(tmp_path_factory, train_cli, rel):
    """A completed tiny run whose new-domain corpus has two lines of invalid UTF-8 (accepted, replaced)."""
    base = tmp_path_factory.mktemp("rundir")
    new, old = base / "new.txt", rel.write_corpus(base / "old.txt", 200, 1, " old")
    lines = rel.write_corpus(new, 200, 0).read_bytes().split(b"\n")
    lines[3] += b" \xff\xfe"
    lines[7] += b" \xc3"
    new.write_bytes(b"\n".join(lines))
    train = train_cli(base / "cache")
    run_dir = base / "run"
    args = rel.tiny_run(new, old, run_dir)
    proc = train(*args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
    return train, args, run_dir, new, proc


def rerun(done, *extra: str, run_dir=None):
    train, args, original, _, _ = done
    args = [a for a in args if not a.startswith("hydra.run.dir=")]
    return train(*args, *extra, f"hydra.run.dir={run_dir or original}")


def interrupted(done, tmp_path):
    """A copy of the run as a kill after its last checkpoint leaves it (no summary.json)."""
    killed = tmp_path / "killed"
    shutil.copytree(done[2], killed)
    (killed / "summary.json").unlink()
    return killed


def test_accepted_bad_text_is_said_on_the_console(done):
    proc = done[4]
    assert "data.domains.new: 2 documents with invalid UTF-8" in proc.stderr, proc.stderr[-2000:]


def test_changed_model_config_is_refused_naming_the_key(done, rel):
    run_dir = done[2]
    before = rel.snapshot(run_dir)
    line = rel.error_line(rerun(done, "model.config.hidden_size=128"))
    assert "model.config.hidden_size 64 -> 128" in line and "train.on_changed_inputs=restart" in line
    assert "hydra.run.dir" in line
    assert rel.snapshot(run_dir) == before


def test_corpus_edit_keeping_size_and_mtime_is_refused(done, rel):
    run_dir, new = done[2], done[3]
    before, content, st = rel.snapshot(run_dir), new.read_bytes(), new.stat()
    try:
        new.write_bytes(content.replace(b"cat", b"cot", 1))  # same size
        os.utime(new, ns=(st.st_atime_ns, st.st_mtime_ns))  # same mtime
        line = rel.error_line(rerun(done))
        assert "the content of data.domains.new.sources changed" in line
        assert rel.snapshot(run_dir) == before
    finally:
        new.write_bytes(content)
        os.utime(new, ns=(st.st_atime_ns, st.st_mtime_ns))


# Slow (`make test-all`): changed inputs stay in `make test` through test_changed_model_config_is_refused_naming_the_key
@pytest.mark.slow
def test_interrupted_run_with_another_model_size_gives_one_line(done, tmp_path, rel):
    killed = interrupted(done, tmp_path)
    before = rel.snapshot(killed)
    line = rel.error_line(rerun(done, "model.config.intermediate_size=128", run_dir=killed))
    assert "model.config.intermediate_size 176 -> 128" in line
    # Accepting the change does not get past a checkpoint that cannot fit: one line again, not a size-mismatch page.
    proc = rerun(done, "model.config.intermediate_size=128", "train.on_changed_inputs=resume", run_dir=killed)
    line = rel.error_line(proc)
    assert "last.ckpt does not fit this run's model" in line and "mlp" in line and "(176, 64)" in line
    assert (killed / "checkpoints" / "last.ckpt").read_bytes() == before["checkpoints/last.ckpt"]
    # The refused attempt did not start the run, so it recorded nothing: the original command still resumes it
    # (issue 26 case 7: it had rewritten inputs.json, and the original command was then refused).
    assert (killed / "inputs.json").read_bytes() == before["inputs.json"]
    proc = rerun(done, run_dir=killed)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((killed / "summary.json").read_text())["status"] == "completed"


def test_restart_accepts_the_change_and_trains_from_step_0(done, tmp_path):
    killed = interrupted(done, tmp_path)
    proc = rerun(done, "model.config.intermediate_size=128", "train.on_changed_inputs=restart", run_dir=killed)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((killed / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 2
    recorded = json.loads((killed / "inputs.json").read_text())["config"]
    assert recorded["model.config.intermediate_size"] == 128


def test_a_second_process_on_a_run_dir_is_refused(done, tmp_path, rel):
    killed = interrupted(done, tmp_path)
    # The lock of a live process on this host (this test's own process stands in for the first run).
    lock = killed / ".cptlab.lock"
    lock.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": "now"}))
    before = rel.snapshot(killed)
    line = rel.error_line(rerun(done, run_dir=killed))
    assert f"in use by pid {os.getpid()} on {socket.gethostname()}" in line
    assert rel.snapshot(killed) == before


def test_a_stale_lock_of_a_dead_process_is_taken_over(done, tmp_path):
    killed = interrupted(done, tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (killed / ".cptlab.lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "since": "x"}))
    proc = rerun(done, run_dir=killed)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((killed / "summary.json").read_text())["status"] == "completed"
    assert not (killed / ".cptlab.lock").exists()  # released at the end


def test_a_damaged_inputs_record_is_refused_naming_it(done, tmp_path, rel):
    """Issue 26 case 8: an unreadable inputs.json let a changed input through without a word."""
    killed = interrupted(done, tmp_path)
    (killed / "inputs.json").write_text('{"config": {"seed": 0, "model.config.hidden_')  # cut short
    before = rel.snapshot(killed)
    line = rel.error_line(rerun(done, "model.config.hidden_size=128", run_dir=killed))
    assert f"{killed / 'inputs.json'} is damaged" in line and "train.on_changed_inputs=restart" in line, line
    assert rel.snapshot(killed) == before


def test_resume_across_a_change_of_the_held_out_split_is_refused(done, tmp_path, rel):
    """Issue 26 case 8: =resume with another data.split_seed scored the rest of the run on other held-out
    documents (made-up forgetting); the split is what is measured, so even =resume refuses it."""
    killed = interrupted(done, tmp_path)
    before = rel.snapshot(killed)
    line = rel.error_line(rerun(done, "data.split_seed=1", "train.on_changed_inputs=resume", run_dir=killed))
    assert "another train/held-out split (data.split_seed 0 -> 1)" in line and "restart" in line, line
    assert rel.snapshot(killed) == before


def test_a_lock_of_a_killed_run_on_another_host_is_taken_over_once_its_lease_ran_out(done, tmp_path, rel):
    """Issue 26 case 6: SLURM requeue onto a new node found the old node's lock and was refused forever."""
    killed = interrupted(done, tmp_path)
    lock = killed / ".cptlab.lock"
    owner = {"pid": 4242, "host": "node-elsewhere", "since": "2024-01-01 00:00:00"}
    lock.write_text(json.dumps({**owner, "heartbeat": time.time()}))  # its holder may be alive: refused
    before = rel.snapshot(killed)
    line = rel.error_line(rerun(done, run_dir=killed))
    assert "in use by pid 4242 on node-elsewhere" in line and "CPTLAB_LOCK_EXPIRY_S" in line, line
    assert rel.snapshot(killed) == before
    lock.write_text(json.dumps({**owner, "heartbeat": time.time() - 3600}))  # its heartbeat stopped an hour ago
    proc = rerun(done, run_dir=killed)
    assert proc.returncode == 0, proc.stderr[-3000:]
    notices = [line for line in proc.stderr.splitlines() if "took over" in line]
    assert len(notices) == 1 and "node-elsewhere" in notices[0] and "warning:" in notices[0], proc.stderr[-3000:]
    assert json.loads((killed / "summary.json").read_text())["status"] == "completed"
    assert not lock.exists()


def test_truncated_checkpoint_is_named_in_one_line(done, tmp_path, rel):
    killed = interrupted(done, tmp_path)
    ckpt = killed / "checkpoints" / "last.ckpt"
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    before = ckpt.read_bytes()
    line = rel.error_line(rerun(done, run_dir=killed))
    assert f"{ckpt} is damaged" in line and "delete it" in line
    assert ckpt.read_bytes() == before


def test_unwritable_cache_and_run_dir_are_named(done, tmp_path, rel):
    """A path below a regular file can be created by nobody (root included): the honest stand-in for a
    read-only place on a machine where the tests run as root."""
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    train, args, *_ = done
    env_train = type(train)(blocker / "cache")  # CPTLAB_CACHE below a file
    line = rel.error_line(env_train(*[a for a in args if not a.startswith("hydra.run.dir=")],
                                    f"hydra.run.dir={tmp_path / 'run'}"))
    assert "paths.cache_dir / CPTLAB_CACHE" in line and str(blocker) in line
    line = rel.error_line(rerun(done, run_dir=blocker / "run"))
    assert "hydra.run.dir" in line and str(blocker) in line


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through permission bits, so chmod cannot make a "
                    "read-only directory here (test_unwritable_cache_and_run_dir_are_named covers the check)")
def test_read_only_run_dir_is_named(done, tmp_path, rel):
    killed = interrupted(done, tmp_path)
    os.chmod(killed, 0o555)
    try:
        line = rel.error_line(rerun(done, run_dir=killed))
        assert "cannot write to" in line and str(killed) in line and "hydra.run.dir" in line
    finally:
        os.chmod(killed, 0o755)


def test_changes_names_what_differs_and_ignores_keys_a_newer_schema_added():
    from cptlab.run.guard import changes

    old = {"config": {"seed": 0, "data.domains.new.sources": ["/a.txt"]}, "sources": {"new": "h1"}, "base": {}}
    assert changes(old, old) == []
    newer = {**old, "config": {**old["config"], "model.some_new_key": False}}
    assert changes(old, newer) == []
    more = {**old, "config": {**old["config"], "data.domains.code.sources": ["/c.txt"]}}
    assert changes(old, more) == ["data.domains.code.sources <unset> -> ['/c.txt']"]
    edited = {**old, "sources": {"new": "h2"}}
    assert changes(old, edited) == ["the content of data.domains.new.sources changed"]

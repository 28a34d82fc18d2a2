"""Nothing of the user's is lost and nothing a killed command left stays (issue 26). cptlab replaces or writes
into only what carries its own marker (never a directory it merely recognises by file names), never an output
that is, lies inside or holds an input, never a run directory holding files it did not write, never outside
CPTLAB_RUNS by a run name; the next export / merge --out / tokenizer extend removes what a killed one left
beside its output; a lock left by a killed run is taken over once its lease ran out (or by its requeued job)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cptlab.errors import CptlabError, RunDirRefused
from cptlab.run.guard import RunLock, claim_run_dir
from cptlab.utils.io import OUTPUT_MARKER, check_replaceable, mark_output, replace_dir

ROOT = Path(__file__).resolve().parents[2]


def files(root: Path, contents: dict[str, str]) -> Path:
    for name, text in contents.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def one_error(capsys, prog: str) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith(f"{prog}: error:"), err
    return err[0]


# -- 1, 2: a directory is cptlab's output only by its marker ---------------------------------------------------


@pytest.mark.parametrize("contents", [
    # a hub-style model directory: every visible name is one an export holds, and a dot-file
    {"README.md": "# my model", ".gitattributes": "*.safetensors filter=lfs", "model.safetensors": "w",
     "config.json": "{}", "tokenizer.json": "{}"},
    # a git checkout of a model
    {"README.md": "# notes", "config.json": "{}", ".git/HEAD": "ref: refs/heads/main"},
    # a tokenizer checkout under git
    {"vocab.json": "{}", "merges.txt": "", ".git/HEAD": "ref: refs/heads/main"},
], ids=["hub_model", "git_model", "git_tokenizer"])
def test_a_directory_of_known_file_names_is_not_taken_for_an_export(tmp_path, contents):
    d = files(tmp_path / "d", contents)
    for kind in ("model", "tokenizer"):
        with pytest.raises(CptlabError, match=f"not a {kind} export written by cptlab"):
            check_replaceable(d, kind, "--out")


@pytest.mark.parametrize("out, how", [("base", "is"), ("base/sub", "lies inside"), (".", "holds")])
def test_an_output_that_is_inside_or_holds_an_input_is_refused(tmp_path, out, how):
    # Even a marked cptlab export: continuing from an earlier export and publishing onto it would destroy the base.
    base = files(tmp_path / "models" / "base", {"config.json": "{}"})
    mark_output(base, "model")
    mark_output(tmp_path / "models", "model")
    target = tmp_path / "models" / out
    with pytest.raises(CptlabError, match=re.escape(f"publish_dir {target} {how} model.name_or_path ({base}): an "
                                                    "output never replaces an input")):
        check_replaceable(target, "model", "publish_dir", inputs={"model.name_or_path": str(base),
                                                                  "tokenizer.path": None})
    assert check_replaceable(tmp_path / "elsewhere", "model", "publish_dir", inputs={"model.name_or_path": "org/hub-id"})


def test_publish_dir_equal_to_the_base_model_is_refused_at_validation(cptlab_train, tmp_path, bpe_tokenizer_dir, rel):
    """Issue 26 case 1: the base model's own (hub-style) directory as publish_dir used to be replaced, rc 0."""
    hub = tmp_path / "hub_model"
    shutil.copytree(bpe_tokenizer_dir, hub)
    files(hub, {"README.md": "# base\n", ".gitattributes": "*.safetensors filter=lfs\n", "model.safetensors": "w",
                "config.json": json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"],
                                           "hidden_size": 64, "intermediate_size": 176, "num_hidden_layers": 2,
                                           "num_attention_heads": 4, "num_key_value_heads": 2,
                                           "max_position_embeddings": 512, "vocab_size": 400})})
    new, old = rel.write_corpus(tmp_path / "new.txt", 200, 0), rel.write_corpus(tmp_path / "old.txt", 200, 1, " old")
    before = rel.snapshot(hub)
    args = [a for a in rel.tiny_run(new, old, tmp_path / "run") if not a.startswith(("model=", "tokenizer"))]
    for marked in (False, True):
        if marked:  # a base that is itself a cptlab export (its marker would allow a replacement): refused too
            mark_output(hub, "model")
            before = rel.snapshot(hub)
        proc = cptlab_train(*args, "model=hf", f"model.name_or_path={hub}", "tokenizer=base",
                            f"publish_dir={hub}")
        line = rel.error_line(proc)
        assert "publish_dir" in line and str(hub) in line, line
        assert "is model.name_or_path" in line and "an output never replaces an input" in line, line
        assert rel.snapshot(hub) == before
        assert not (tmp_path / "run" / "checkpoints").exists()


# -- 2, 3: cptlab-tokenizer extend ------------------------------------------------------------------------------


def extend(*args: str):
    from cptlab.cli.tokenizer import main

    with pytest.raises(SystemExit) as info:
        main(["extend", *args])
    return info.value.code


@pytest.fixture(scope="module")
def zh_corpus(tmp_path_factory) -> Path:
    hanzi = "猫狗坐在垫子上跑得快慢模型数据训练测试"
    path = tmp_path_factory.mktemp("zh") / "zh.txt"
    path.write_text("\n".join("".join(hanzi[(i * 7 + j) % len(hanzi)] for j in range(12)) for i in range(200)) + "\n",
                    encoding="utf-8")
    return path


def test_extend_out_on_a_git_checkout_is_refused(bpe_tokenizer_dir, zh_corpus, tmp_path, capsys, rel):
    out = files(tmp_path / "checkout", {"vocab.json": "{}", ".git/HEAD": "ref: refs/heads/main", ".git/config": ""})
    before = rel.snapshot(out)
    code = extend("--base", str(bpe_tokenizer_dir), "--corpus", str(zh_corpus), "--vocab-size", "300",
                  "--out", str(out))
    line = one_error(capsys, "cptlab-tokenizer")
    assert code == 2 and "--out" in line and "not a tokenizer export written by cptlab" in line
    assert rel.snapshot(out) == before


@pytest.mark.parametrize("where", ["same", "inside"])
def test_extend_out_on_its_own_base_is_refused_before_any_work(bpe_tokenizer_dir, zh_corpus, tmp_path, capsys, rel,
                                                               spy, where):
    """Issue 26 case 3: --out equal to --base overwrote the base (and printed the new tokenizer's figures as
    "before"); even a base that is an earlier extend output (marked) is refused."""
    import cptlab.cli.tokenizer as cli

    base = tmp_path / "base"
    shutil.copytree(bpe_tokenizer_dir, base)
    mark_output(base, "tokenizer")
    before = rel.snapshot(base)
    reads = spy(cli, "read_texts")
    out = base if where == "same" else base / "extended"
    code = extend("--base", str(base), "--corpus", str(zh_corpus), "--vocab-size", "300", "--out", str(out))
    line = one_error(capsys, "cptlab-tokenizer")
    assert code == 2 and "an output never replaces an input" in line and "--base" in line, line
    assert rel.snapshot(base) == before and not reads


# -- 5: what a killed export / merge --out / extend left beside its output -----------------------------------


def killed_writer(out: Path) -> None:
    """A writer of `out` (the code path of cptlab-export, cptlab-merge --out, cptlab-tokenizer extend and
    publish_dir) SIGKILLed in the middle of writing, as a user's Ctrl-\\ or the OOM killer leaves it."""
    ready = out.parent / f"ready-{out.name}"
    code = ("import pathlib, sys, time\nfrom cptlab.utils.io import replace_dir\n"
            "def write(tmp):\n    (tmp / 'model.safetensors').write_bytes(b'x' * 4096)\n"
            "    pathlib.Path(sys.argv[2]).touch()\n    time.sleep(600)\n"
            "replace_dir(sys.argv[1], write, kind=sys.argv[3], what='--out')\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(out), str(ready), "tokenizer" if "tok" in out.name
                             else "model"], cwd=ROOT)
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the writer did not start"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    ready.unlink()


def leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


def test_replace_dir_removes_what_a_killed_writer_left(tmp_path):
    out = tmp_path / "export"
    killed_writer(out)
    left = leftovers(out)
    assert f".{out.name}.lock" in left and any(n.endswith(".tmp") for n in left), left
    replace_dir(out, lambda tmp: (tmp / "config.json").write_text("{}"), kind="model", what="--out")
    assert leftovers(out) == [] and (out / "config.json").is_file()


def test_replace_dir_refuses_while_a_live_writer_holds_the_path_and_keeps_its_files(tmp_path):
    out = tmp_path / "export"
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        (tmp_path / f".{out.name}.lock").write_text(json.dumps(
            {"pid": live.pid, "host": socket.gethostname(), "since": "now", "heartbeat": time.time()}))
        (tmp_path / f".{out.name}.abcd1234.tmp").mkdir()  # the live writer's
        with pytest.raises(CptlabError, match=f"--out {out} is in use by pid {live.pid}"):
            replace_dir(out, lambda tmp: None, kind="model", what="--out")
        assert (tmp_path / f".{out.name}.abcd1234.tmp").is_dir() and not out.exists()
    finally:
        live.kill()
        live.wait()


def test_extend_removes_what_a_killed_extend_left(bpe_tokenizer_dir, zh_corpus, tmp_path):
    out = tmp_path / "tok"
    killed_writer(out)
    # And what an earlier version's extend left when killed: its build dir, its swap dir, its (empty) file lock.
    (tmp_path / ".tok.q1w2e3r4.tmp").mkdir()
    (tmp_path / ".tok.z9x8c7v6.old").mkdir()
    assert leftovers(out)
    from cptlab.cli.tokenizer import main

    main(["extend", "--base", str(bpe_tokenizer_dir), "--corpus", str(zh_corpus), "--vocab-size", "300", "--out",
          str(out)])
    assert leftovers(out) == [], leftovers(out)
    assert json.loads((out / OUTPUT_MARKER).read_text())["kind"] == "tokenizer"


def test_an_empty_lock_an_earlier_version_left_is_removed(tmp_path, capsys):
    out = tmp_path / "tok"
    lock = tmp_path / ".tok.lock"
    lock.write_bytes(b"")  # filelock's lock file: never removed, empty
    os.utime(lock, (time.time() - 3600, time.time() - 3600))
    replace_dir(out, lambda tmp: None, kind="tokenizer", what="--out")
    assert not lock.exists() and out.is_dir()


# -- 4: a run directory holding files cptlab did not write -------------------------------------------------------


@pytest.fixture
def users_dir(tmp_path) -> Path:
    return files(tmp_path / "mine", {"tokenizer/mine.txt": "my notes\n", "metrics.csv": "a,b\n1,2\n",
                                     "report.md": "# my report\n", "summary.json": '{"mine": true}\n'})


def test_a_users_directory_as_hydra_run_dir_is_refused_before_anything_is_written(cptlab_train, users_dir, tmp_path,
                                                                                   rel):
    """Issue 26 case 4: tokenizer/mine.txt was deleted, metrics.csv, report.md, summary.json overwritten."""
    new, old = rel.write_corpus(tmp_path / "new.txt", 200, 0), rel.write_corpus(tmp_path / "old.txt", 200, 1, " old")
    before = rel.snapshot(users_dir)
    line = rel.error_line(cptlab_train(*rel.tiny_run(new, old, users_dir)))
    assert f"hydra.run.dir={users_dir}" in line and "holds files cptlab did not write" in line, line
    assert "metrics.csv" in line and "nothing was changed" in line
    assert rel.snapshot(users_dir) == before
    assert sorted(p.name for p in users_dir.iterdir()) == ["metrics.csv", "report.md", "summary.json", "tokenizer"]


def test_claim_run_dir_marks_what_is_cptlabs_and_refuses_the_rest(tmp_path, users_dir):
    fresh = tmp_path / "runs" / "fresh"
    claim_run_dir(fresh)  # created, marked
    assert json.loads((fresh / OUTPUT_MARKER).read_text())["kind"] == "run"
    claim_run_dir(fresh)  # cptlab's own: used as it is
    hydra_only = files(tmp_path / "hydra_only", {".hydra/config.yaml": "a: 1\n", "train.log": ""})
    claim_run_dir(hydra_only)  # what Hydra writes for a job before cptlab runs (a multirun job's directory)
    assert (hydra_only / OUTPUT_MARKER).is_file()
    # A run of an earlier cptlab (before the marker): recognised by its inputs.json, the record only cptlab writes.
    earlier = files(tmp_path / "earlier", {"inputs.json": json.dumps({"config": {"seed": 0}, "sources": {},
                                                                      "base": {}}),
                                           "metrics.csv": "step\n0\n", "summary.json": "{}"})
    claim_run_dir(earlier)
    assert (earlier / OUTPUT_MARKER).is_file()
    look_alike = files(tmp_path / "look_alike", {"inputs.json": '{"mine": 1}', "summary.json": "{}"})
    export = tmp_path / "export"
    export.mkdir()
    mark_output(export, "model")
    for refused, why in ((users_dir, "holds files cptlab did not write"), (look_alike, "did not write"),
                         (export, "is a model written by cptlab, not a run directory")):
        before = sorted(p.name for p in refused.iterdir())
        with pytest.raises(RunDirRefused, match=why):
            claim_run_dir(refused)
        assert sorted(p.name for p in refused.iterdir()) == before


# -- 13: a run name that leads outside CPTLAB_RUNS ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["../escape", "a/../../escape", "/tmp/escape-absolute"])
def test_a_run_name_outside_cptlab_runs_is_refused(cptlab_train, tmp_path, monkeypatch, rel, name):
    runs = tmp_path / "runs"
    monkeypatch.setenv("CPTLAB_RUNS", str(runs))
    new, old = rel.write_corpus(tmp_path / "new.txt", 200, 0), rel.write_corpus(tmp_path / "old.txt", 200, 1, " old")
    args = [a for a in rel.tiny_run(new, old, tmp_path) if not a.startswith("hydra.run.dir=")]
    line = rel.error_line(cptlab_train(*args, f"name={name}"))
    assert f"name={name}" in line and "paths.runs_dir" in line, line
    assert not (tmp_path / "escape").exists() and not Path("/tmp/escape-absolute").exists()
    assert not runs.exists() or not any(runs.rglob("*.log"))


def test_cptlab_prepare_refuses_such_a_name_too(tmp_path, monkeypatch, rel):
    monkeypatch.setenv("CPTLAB_RUNS", str(tmp_path / "runs"))
    new, old = rel.write_corpus(tmp_path / "new.txt", 200, 0), rel.write_corpus(tmp_path / "old.txt", 200, 1, " old")
    proc = cli("cptlab.cli.prepare", "name=../../escape", "data=files", f"data.domains.new.sources=[{new}]",
               f"data.domains.old.sources=[{old}]", "tokenizer=train", "prepare.tokenizer_only=true")
    line = rel.error_line(proc, "cptlab-prepare")
    assert "name=../../escape" in line and "paths.runs_dir" in line, line
    assert not (tmp_path / "escape").exists()


# -- 6: a lock left by a killed run, on another host ----------------------------------------------------------------


def write_lock(run_dir: Path, **owner) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / ".cptlab.lock"
    path.write_text(json.dumps({"pid": 4242, "host": "node-elsewhere", "since": "2024-01-01 00:00:00", **owner}))
    return path


def test_a_lock_of_another_host_whose_heartbeat_stopped_is_taken_over(tmp_path, capsys):
    path = write_lock(tmp_path / "run", heartbeat=time.time() - 3600)
    lock = RunLock(tmp_path / "run").acquire()
    try:
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(err) == 1 and err[0].startswith("cptlab-train: warning: took over"), err
        assert "node-elsewhere" in err[0] and "heartbeat stopped" in err[0] and "CPTLAB_LOCK_EXPIRY_S" in err[0]
        owner = json.loads(path.read_text())
        assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()
    finally:
        lock.release()
    assert not path.exists()


def test_a_lock_of_another_host_with_a_fresh_heartbeat_is_refused(tmp_path):
    path = write_lock(tmp_path / "run", heartbeat=time.time() - 5)
    before = path.read_bytes()
    with pytest.raises(RunDirRefused, match=r"in use by pid 4242 on node-elsewhere .*heartbeat \d+ s ago"):
        RunLock(tmp_path / "run").acquire()
    assert path.read_bytes() == before


def test_an_earlier_versions_lock_of_another_host_is_still_refused(tmp_path):
    """No heartbeat in it: nothing tells a live holder from a dead one, so it is left to the user, as before."""
    path = write_lock(tmp_path / "run")
    with pytest.raises(RunDirRefused, match="in use by pid 4242 on node-elsewhere"):
        RunLock(tmp_path / "run").acquire()
    assert path.is_file()


def test_a_requeued_slurm_job_takes_over_its_own_lock_at_once(tmp_path, monkeypatch, capsys):
    path = write_lock(tmp_path / "run", heartbeat=time.time(), job="8123")
    monkeypatch.setenv("SLURM_JOB_ID", "8124")  # another job: refused
    with pytest.raises(RunDirRefused, match="in use by pid 4242"):
        RunLock(tmp_path / "run").acquire()
    monkeypatch.setenv("SLURM_JOB_ID", "8123")  # the same job, requeued on another node
    lock = RunLock(tmp_path / "run").acquire()
    try:
        assert "SLURM_JOB_ID=8123" in capsys.readouterr().err
        assert json.loads(path.read_text())["job"] == "8123"
    finally:
        lock.release()


def test_the_holder_keeps_its_heartbeat_fresh_and_the_expiry_is_configurable(tmp_path, monkeypatch):
    monkeypatch.setenv("CPTLAB_LOCK_HEARTBEAT_S", "0.05")
    (tmp_path / "run").mkdir()
    lock = RunLock(tmp_path / "run").acquire()
    path = tmp_path / "run" / ".cptlab.lock"
    try:
        first = json.loads(path.read_text())["heartbeat"]
        deadline = time.monotonic() + 10
        while json.loads(path.read_text())["heartbeat"] == first:
            assert time.monotonic() < deadline, "no heartbeat"
            time.sleep(0.05)
    finally:
        lock.release()
    assert not path.exists()
    time.sleep(0.2)
    assert not path.exists()  # the heartbeat stopped with the lock: it never writes the file back
    monkeypatch.setenv("CPTLAB_LOCK_EXPIRY_S", "2")
    write_lock(tmp_path / "run", heartbeat=time.time() - 3)
    RunLock(tmp_path / "run").acquire().release()
    monkeypatch.setenv("CPTLAB_LOCK_EXPIRY_S", "soon")
    write_lock(tmp_path / "run", heartbeat=time.time() - 3)
    with pytest.raises(CptlabError, match="CPTLAB_LOCK_EXPIRY_S=soon"):
        RunLock(tmp_path / "run").acquire()


# -- 2, 5 on a real run: cptlab-export and cptlab-merge --out --------------------------------------------------------


@pytest.fixture(scope="module")
def finished(tmp_path_factory, train_cli, rel) -> Path:
    base = tmp_path_factory.mktemp("finished")
    new, old = rel.write_corpus(base / "new.txt", 200, 0), rel.write_corpus(base / "old.txt", 200, 1, " old")
    run_dir = base / "run"
    proc = train_cli(base / "cache")(*rel.tiny_run(new, old, run_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir


def cli(module: str, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env=env)


def test_export_out_on_a_git_checkout_or_inside_the_run_is_refused(finished, tmp_path, rel):
    """Issue 26 case 2: a git repository holding README.md and config.json was replaced, .git included."""
    checkout = files(tmp_path / "repo", {"README.md": "# mine\n", "config.json": "{}",
                                         ".git/HEAD": "ref: refs/heads/main"})
    before, run_before = rel.snapshot(checkout), rel.snapshot(finished)
    line = rel.error_line(cli("cptlab.cli.export", str(finished), "--out", str(checkout)), "cptlab-export")
    assert f"--out {checkout}" in line and "not a model export written by cptlab" in line, line
    line = rel.error_line(cli("cptlab.cli.export", str(finished), "--out", str(finished / "export")), "cptlab-export")
    assert "lies inside the run directory" in line, line
    assert rel.snapshot(checkout) == before and rel.snapshot(finished) == run_before


@pytest.mark.parametrize("command", [["cptlab.cli.export"], ["cptlab.cli.merge", "--alpha", "0.5"]], ids=["export", "merge"])
def test_export_and_merge_out_remove_what_a_killed_one_left(finished, tmp_path, command):
    out = tmp_path / "model"
    killed_writer(out)
    assert leftovers(out)
    proc = cli(command[0], str(finished), *command[1:], "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert leftovers(out) == [] and (out / "config.json").is_file()
    assert json.loads((out / OUTPUT_MARKER).read_text())["kind"] == "model"

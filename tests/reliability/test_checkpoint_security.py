"""Checkpoints never run code and never leave a mess: a `last.ckpt` carrying a pickle payload is refused in one line
naming it by resume (the pre-check and Lightning's own restore), cptlab-export and cptlab-merge, and the payload
never runs; what cptlab itself saves loads with the weights-only unpickler and resumes exactly; a save killed
half-way leaves a temporary file that the next run removes; a full disk at a save is one line naming the path,
the previous `last.ckpt` intact, and the re-run resumes bit-identically."""

from __future__ import annotations

import csv
import errno
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from cptlab.errors import CptlabError

ROOT = Path(__file__).resolve().parents[2]


class Payload:
    """What a hostile `last.ckpt` carries: unpickling it runs a shell command that creates `sentinel`."""

    def __init__(self, sentinel: Path):
        self.sentinel = sentinel

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.sentinel))}",)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, train_cli, rel):
    """A completed four-step tiny run (checkpoints at steps 2 and 4): the uninterrupted reference."""
    base = tmp_path_factory.mktemp("ckpt")
    new = rel.write_corpus(base / "new.txt", 200, 0)
    old = rel.write_corpus(base / "old.txt", 200, 1, " old")
    train = train_cli(base / "cache")
    run_dir = base / "reference"
    args = [a for a in rel.tiny_run(new, old, run_dir, "trainer.max_steps=4") if not a.startswith("hydra.run.dir=")]
    proc = train(*args, f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return train, args, run_dir


def run(reference, run_dir: Path):
    train, args, _ = reference
    return train(*args, f"hydra.run.dir={run_dir}")


def copy_run(reference, dst: Path, *, completed: bool) -> Path:
    """A copy of the reference run; not completed: as a kill after its last checkpoint leaves it."""
    shutil.copytree(reference[2], dst)
    if not completed:
        (dst / "summary.json").unlink()
    return dst


def plant(run_dir: Path, sentinel: Path) -> Path:
    """Put the payload inside the run's real checkpoint, where a user resuming or exporting will load it."""
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True)
    checkpoint["cptlab"]["payload"] = Payload(sentinel)
    torch.save(checkpoint, ckpt)
    return ckpt


def series(run_dir: Path) -> dict:
    """Every logged metric by (step, key), wall-clock ones (tokens per second, seconds) left out."""
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return {(int(r["step"]), k): float(v) for r in rows for k, v in r.items()
            if v and k != "step" and not k.endswith(("tokens_per_sec", "seconds"))}


def temporaries(run_dir: Path) -> list[str]:
    return sorted(p.name for p in (run_dir / "checkpoints").iterdir() if ".tmp" in p.name)


# -- code in a checkpoint never runs ----------------------------------------------------------------------


def test_what_cptlab_saves_loads_weights_only_without_an_allow_list(reference):
    from cptlab.training.checkpoint import SAFE_GLOBALS

    checkpoint = torch.load(reference[2] / "checkpoints" / "last.ckpt", weights_only=True)  # torch's own defaults
    assert checkpoint["global_step"] == 4 and checkpoint["cptlab"]["rng"]["cpu"].dtype == torch.uint8
    assert SAFE_GLOBALS == ()


def test_resume_refuses_a_checkpoint_with_a_payload(reference, tmp_path, rel):
    run_dir = copy_run(reference, tmp_path / "shared", completed=False)
    sentinel = tmp_path / "SENTINEL"
    ckpt = plant(run_dir, sentinel)
    before = ckpt.read_bytes()
    line = rel.error_line(run(reference, run_dir))
    assert f"{ckpt} is refused: its pickle names posix.system" in line, line
    assert "nothing in it ran" in line
    assert not sentinel.exists()
    assert ckpt.read_bytes() == before


@pytest.mark.parametrize("command", [
    ["cptlab.cli.export", "{run}", "--out", "{out}"],
    ["cptlab.cli.merge", "{run}"],
    ["cptlab.cli.merge", "{run}", "--alpha", "0.5", "--out", "{out}"],
], ids=["export", "merge", "merge_out"])
def test_export_and_merge_refuse_a_checkpoint_with_a_payload(reference, tmp_path, rel, command):
    run_dir = copy_run(reference, tmp_path / "downloaded", completed=True)
    sentinel = tmp_path / "SENTINEL"
    ckpt = plant(run_dir, sentinel)
    out = tmp_path / "out"
    argv = [a.format(run=run_dir, out=out) for a in command]
    proc = subprocess.run([sys.executable, "-m", *argv], cwd=ROOT, capture_output=True, text=True, timeout=300)
    line = rel.error_line(proc, prog="cptlab-" + command[0].rsplit(".", 1)[1])  # cptlab.cli.export: cptlab-export
    assert f"{ckpt} is refused: its pickle names posix.system" in line, line
    assert not sentinel.exists()
    assert not out.exists()


def test_lightnings_own_restore_is_weights_only(tmp_path):
    """Even past cptlab's pre-check, Trainer.fit(ckpt_path=...) reads through AtomicCheckpointIO, weights only,
    whatever `weights_only` Lightning is given."""
    import pytorch_lightning as pl

    from cptlab.training.checkpoint import AtomicCheckpointIO, UnsafeCheckpoint

    sentinel = tmp_path / "SENTINEL"
    ckpt = tmp_path / "last.ckpt"
    torch.save({"global_step": 1, "state_dict": {}, "x": Payload(sentinel)}, ckpt)
    with pytest.raises(UnsafeCheckpoint, match=f"{ckpt} is refused"):
        AtomicCheckpointIO().load_checkpoint(ckpt, weights_only=False)

    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)

        def training_step(self, batch, batch_idx):
            return self.layer(batch[0]).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

        def train_dataloader(self):
            return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(4, 2)), batch_size=2)

    trainer = pl.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                         plugins=[AtomicCheckpointIO()])
    with pytest.raises(UnsafeCheckpoint):
        trainer.fit(Tiny(), ckpt_path=ckpt, weights_only=False)
    assert not sentinel.exists()


# -- a save killed half-way ---------------------------------------------------------------------------------

KILLED_SAVE = textwrap.dedent("""
    import sys, time
    import cptlab.training.checkpoint as checkpoint

    def stuck(obj, f):  # a save that has written part of the file when SIGKILL arrives
        f.write(b"x" * 65536)
        f.flush()
        print("writing", flush=True)
        time.sleep(600)

    checkpoint.torch.save = stuck
    checkpoint.AtomicCheckpointIO().save_checkpoint({"global_step": 9}, sys.argv[1])
""")


def test_the_temporary_file_of_a_killed_save_is_removed_by_the_next_run(reference, tmp_path):
    run_dir = copy_run(reference, tmp_path / "killed", completed=False)
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    before = ckpt.read_bytes()
    proc = subprocess.Popen([sys.executable, "-c", KILLED_SAVE, str(ckpt)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert temporaries(run_dir) == [f".last.ckpt.tmp-{proc.pid}"]
    assert ckpt.read_bytes() == before  # the rename never happened
    resumed = run(reference, run_dir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert temporaries(run_dir) == []
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize("lock", ["mine", "none", "another_host"])
def test_which_temporaries_a_run_removes(tmp_path, lock):
    import socket

    from cptlab.training.checkpoint import remove_stale_temporaries

    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    dead, alive = _dead_pid(), os.getppid()  # a pid gone from this host, and one that runs
    names = [f".last.ckpt.tmp-{dead}", f".step2.ckpt.tmp-{alive}", f".last.ckpt.tmp-{os.getpid()}",
             "last.ckpt", ".last.ckpt.tmp-x", "notes.tmp-1"]
    for name in names:
        (ckpts / name).write_bytes(b"x")
    owner = {"mine": {"pid": os.getpid(), "host": socket.gethostname()},
             "another_host": {"pid": os.getpid(), "host": "elsewhere"}}.get(lock)
    if owner:
        (tmp_path / ".cptlab.lock").write_text(json.dumps(owner))
    removed = {p.name for p in remove_stale_temporaries(tmp_path)}
    expected = {"mine": {names[0], names[1]}, "none": {names[0]}, "another_host": set()}[lock]
    assert removed == expected
    assert {p.name for p in ckpts.iterdir()} == set(names) - expected


# -- a full disk at a save ----------------------------------------------------------------------------------

FULL_DISK = textwrap.dedent("""
    import errno, io, os, sys
    import cptlab.training.checkpoint as checkpoint

    left = [int(os.environ["SAVES_BEFORE_FULL"])]

    class Filling(io.FileIO):  # writes 4 KiB, then the device is full
        room = 4096

        def write(self, data):
            if self.room <= 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self.room -= len(data)
            return super().write(data)

    create = checkpoint._create

    def filling_disk(tmp):  # the checkpoint writer's files only
        left[0] -= 1
        return create(tmp) if left[0] >= 0 else Filling(tmp, "xb")

    checkpoint._create = filling_disk
    sys.argv = ["cptlab-train", *sys.argv[1:]]
    from cptlab.cli.train import train_main

    train_main()
""")


def check_full_disk_failure(line: str, run_dir: Path) -> None:
    """One line naming the path; the step-2 checkpoint intact and loadable; no temporary file left."""
    from cptlab.training.checkpoint import load_checkpoint_file

    ckpt = run_dir / "checkpoints" / "last.ckpt"
    assert f"no space left on device writing {ckpt}" in line and f"the previous {ckpt.name} is intact" in line, line
    assert temporaries(run_dir) == []
    assert load_checkpoint_file(ckpt)["global_step"] == 2


def assert_same_as_reference(reference, run_dir: Path) -> None:
    ref, got = series(reference[2]), series(run_dir)
    assert set(ref) == set(got)
    assert {k: (ref[k], got[k]) for k in ref if ref[k] != got[k]} == {}
    final = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    expected = torch.load(reference[2] / "checkpoints" / "last.ckpt", weights_only=True)
    assert final["global_step"] == expected["global_step"] == 4
    assert all(torch.equal(final["state_dict"][k], v) for k, v in expected["state_dict"].items())


def test_a_full_disk_at_a_checkpoint_is_one_line_and_the_rerun_resumes_exactly(reference, tmp_path, rel):
    train, args, _ = reference
    run_dir = tmp_path / "full"
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env.update(CPTLAB_CACHE=str(train.cache_dir), SAVES_BEFORE_FULL="1")  # step 2's save fits, step 4's does not
    proc = subprocess.run([sys.executable, "-c", FULL_DISK, *args, f"hydra.run.dir={run_dir}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, env=env)
    check_full_disk_failure(rel.error_line(proc), run_dir)
    resumed = run(reference, run_dir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_as_reference(reference, run_dir)


def _can_mount_tmpfs(where: Path) -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-r", "-m", "sh", "-c", f"mount -t tmpfs -o size=1m tmpfs {shlex.quote(str(where))}"],
                           capture_output=True, timeout=30)
    return probe.returncode == 0


def test_a_real_full_tmpfs_at_a_checkpoint(reference, tmp_path, rel):
    """The same on a real file system that fills up: a tmpfs with room for one checkpoint, not two (mounted in a
    user namespace, so no privileges are needed; skipped where the kernel or container forbids it). The re-run
    from the kept step-2 checkpoint is the fault-injected test's."""
    disk, kept = tmp_path / "disk", tmp_path / "kept"
    disk.mkdir()
    if not _can_mount_tmpfs(disk):
        pytest.skip("cannot mount a tmpfs in a user namespace here")
    train, args, ref_dir = reference
    size = int((ref_dir / "checkpoints" / "last.ckpt").stat().st_size * 1.5) + 512 * 1024
    run_dir = disk / "run"
    cmd = " ".join(shlex.quote(a) for a in [sys.executable, "-m", "cptlab.cli.train_app", *args, f"hydra.run.dir={run_dir}"])
    script = (f"mount -t tmpfs -o size={size} tmpfs {shlex.quote(str(disk))} || exit 99; cd {shlex.quote(str(ROOT))}; "
              f"{cmd}; rc=$?; cp -a {shlex.quote(str(run_dir))} {shlex.quote(str(kept))}; exit $rc")
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env["CPTLAB_CACHE"] = str(train.cache_dir)
    proc = subprocess.run(["unshare", "-r", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=300,
                          env=env)
    assert proc.returncode != 99, proc.stderr
    line = rel.error_line(proc)
    assert "MiB free there" in line, line
    check_full_disk_failure(line.replace(str(run_dir), str(kept)), kept)  # the tmpfs is gone: its copy


def test_a_save_never_writes_through_a_link_planted_at_its_temporary_name(tmp_path):
    """The temporary name is easy to guess: in a shared run directory a link planted there must not have the
    checkpoint written over the file it points to."""
    from cptlab.training.checkpoint import AtomicCheckpointIO, load_checkpoint_file, temporary_path

    victim = tmp_path / "victim.txt"
    victim.write_text("the user's file")
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir()
    temporary_path(ckpt).symlink_to(victim)
    AtomicCheckpointIO().save_checkpoint({"global_step": 3}, ckpt)
    assert victim.read_text() == "the user's file"
    assert load_checkpoint_file(ckpt) == {"global_step": 3}
    assert temporaries(tmp_path) == []


def _wrapped_enospc(obj, f):
    """What torch.save does on a full disk: its writer's RuntimeError, the file's OSError behind it."""
    f.write(b"x" * 1024)
    try:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    except OSError:
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")


@pytest.mark.parametrize("failure, expected", [
    (_wrapped_enospc, "no space left on device writing {path}"),
    (OSError(errno.EDQUOT, os.strerror(errno.EDQUOT)), "disk quota exceeded writing {path}"),
    (OSError(errno.EIO, os.strerror(errno.EIO)), "cannot write {path}: Input/output error"),
    (RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed"), "writing {path} failed"),
], ids=["enospc", "quota", "eio", "writer"])
def test_a_failed_save_is_one_line_naming_the_path_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch, failure,
                                                                                      expected):
    import cptlab.training.checkpoint as checkpoint

    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    checkpoint.AtomicCheckpointIO().save_checkpoint({"global_step": 2}, ckpt)

    def save(obj, f):
        if callable(failure):
            failure(obj, f)
        raise failure

    monkeypatch.setattr(checkpoint.torch, "save", save)
    with pytest.raises(CptlabError) as err:
        checkpoint.AtomicCheckpointIO().save_checkpoint({"global_step": 4}, ckpt)
    line = str(err.value)
    assert expected.format(path=ckpt) in line and "the previous last.ckpt is intact" in line, line
    assert "\n" not in line
    assert checkpoint.load_checkpoint_file(ckpt) == {"global_step": 2}
    assert temporaries(tmp_path) == []


def test_a_save_failing_for_another_reason_keeps_its_traceback(tmp_path, monkeypatch):
    import cptlab.training.checkpoint as checkpoint

    def save(obj, f):
        raise RuntimeError("a bug")

    monkeypatch.setattr(checkpoint.torch, "save", save)
    with pytest.raises(RuntimeError, match="a bug"):
        checkpoint.AtomicCheckpointIO().save_checkpoint({"global_step": 4}, tmp_path / "checkpoints" / "last.ckpt")
    assert temporaries(tmp_path) == []

"""Sweeps as users launch them: Hydra multiruns through the real CLI, resumed, with failing jobs,
with the submitit local launcher, and the SLURM preset rendered to an sbatch script."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ["experiment=demo_zh", "debug=smoke", "trainer.max_steps=4", "eval.every_n_steps=2"]


def cptlab_train(*args, timeout=600, wait=True):
    cmd = [sys.executable, "-m", "cptlab.cli.train_app", *args]
    if not wait:
        return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


SWEPT = ("data.replay_ratio", "optim.lr")


def statuses(sweep_dir):
    """{the swept overrides of a job (its directory name minus the fixed ones): status}"""
    out = {}
    for summary in Path(sweep_dir).glob("*/summary.json"):
        parts = [kv for kv in summary.parent.name.split(",") if kv.split("=")[0] in SWEPT]
        out[",".join(parts)] = json.loads(summary.read_text())["status"]
    return out


# Slow (`make test-all`): a sweep that goes on past a failed job stays in `make test`
# (test_the_sweep_goes_on_after_a_job_failing_mid_training), and a -m run in tests/e2e/test_cli.py.
@pytest.mark.slow
def test_grid_completes_then_resumes_only_missing_work(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", *SMOKE, "data.replay_ratio=0,0.25", "optim.lr=0.001,0.002", f"hydra.sweep.dir={sweep}"]
    # Kill the sweep once its first job has finished: the rest must be done by the re-run alone.
    proc = cptlab_train(*args, wait=False)
    deadline = time.time() + 300
    while not statuses(sweep) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = [k for k, v in statuses(sweep).items() if v == "completed"]
    assert 1 <= len(done_before) < 4

    rerun = cptlab_train(*args)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    final = statuses(sweep)
    assert sorted(final) == sorted([
        "data.replay_ratio=0,optim.lr=0.001", "data.replay_ratio=0,optim.lr=0.002",
        "data.replay_ratio=0.25,optim.lr=0.001", "data.replay_ratio=0.25,optim.lr=0.002"])
    assert set(final.values()) == {"completed"}
    assert rerun.stdout.count("already completed") == len(done_before)

    again = cptlab_train(*args)
    assert again.returncode == 0 and again.stdout.count("already completed") == 4


def test_a_sweep_with_an_invalid_job_starts_none(tmp_path):
    """Every job of a sweep is composed and validated before the first one starts (issue #26, case 12): one bad
    value refuses the sweep in one line naming that job, and nothing trains or is written."""
    sweep = tmp_path / "sweep"
    proc = cptlab_train("-m", *SMOKE, "data.replay_ratio=0.25,1.5", f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines() == [
        "cptlab-train: error: job 2 of 2 (data.replay_ratio=1.5): data.replay_ratio=1.5 must be in [0, 1) "
        "(no job was started)"]
    assert not sweep.exists()


def test_the_sweep_goes_on_after_a_job_failing_mid_training(tmp_path):
    """Job #0 diverges mid-training (a huge lr: a non-finite loss under train.nan_policy=stop), job #1 still runs
    to the end; the command then exits non-zero listing the failure. (A job that fails validation stops the
    sweep before any job starts: test_a_sweep_with_an_invalid_job_starts_none.)"""
    sweep = tmp_path / "sweep"
    proc = cptlab_train("-m", *SMOKE, "train.nan_policy=stop", "optim.lr=1e6,0.001", f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 1, proc.stderr[-3000:]
    launched = [line.split("#", 1)[1] for line in proc.stdout.splitlines() if "[HYDRA] \t#" in line]
    assert [job.split(" : ")[0] for job in launched] == ["0", "1"]
    assert [job.split("optim.lr=")[1].split()[0] for job in launched] == ["1000000.0", "0.001"]
    final = statuses(sweep)
    assert final == {"optim.lr=1000000.0": "failed", "optim.lr=0.001": "completed"}
    summaries = {lr: json.loads(next(sweep.glob(f"*optim.lr={lr},*/summary.json")).read_text())
                 for lr in ("1000000.0", "0.001")}
    assert "non-finite train loss" in summaries["1000000.0"]["error"]  # it failed while training
    completed = summaries["0.001"]
    assert completed["status"] == "completed" and completed["steps"] == 4
    tail = proc.stderr.strip().splitlines()[-2:]
    assert tail[0] == "cptlab-train: 1 job(s) of the sweep failed:"
    assert "optim.lr=1000000.0," in tail[1] and "non-finite train loss" in tail[1]


def test_in_process_ddp_inside_a_local_multirun_is_refused(tmp_path):
    sweep = tmp_path / "sweep"
    proc = cptlab_train("-m", *SMOKE, "trainer=ddp", "trainer.accelerator=cpu", "trainer.precision=32-true",
                        "data.replay_ratio=0,0.25", f"hydra.sweep.dir={sweep}")
    assert proc.returncode != 0
    assert "trainer.strategy=ddp" in proc.stderr and "submitit" in proc.stderr
    assert set(statuses(sweep).values()) == {"failed"}


@pytest.mark.slow
def test_submitit_local_runs_a_two_job_sweep(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    sweep = tmp_path / "sweep"
    proc = cptlab_train("-m", *SMOKE, "hydra/launcher=submitit_local", "data.replay_ratio=0,0.25",
                        f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert statuses(sweep) == {"data.replay_ratio=0": "completed", "data.replay_ratio=0.25": "completed"}


def test_slurm_preset_renders_one_task_per_gpu(compose_cfg, tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from omegaconf import OmegaConf

    cfg = compose_cfg(["experiment=demo_zh", "trainer=ddp", "trainer.devices=4", "hydra/launcher=slurm_gpu",
                       "hydra.launcher.partition=gpu", f"hydra.sweep.dir={tmp_path}"], hydra_node=True)
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher["gpus_per_node"] == launcher["tasks_per_node"] == 4
    # The sbatch text submitit writes (its executor itself insists on a real cluster, srun on PATH).
    from submitit.slurm.slurm import _make_sbatch_string

    script = _make_sbatch_string(command="python -m cptlab.cli.train_app", folder=tmp_path / "submitit", job_name="job",
                                 gpus_per_node=launcher["gpus_per_node"], ntasks_per_node=launcher["tasks_per_node"],
                                 nodes=launcher["nodes"], time=launcher["timeout_min"],
                                 partition=launcher["partition"], cpus_per_task=launcher["cpus_per_task"],
                                 signal_delay_s=launcher["signal_delay_s"])
    assert "#SBATCH --gpus-per-node=4" in script
    assert "#SBATCH --ntasks-per-node=4" in script
    assert "#SBATCH --partition=gpu" in script
    assert "--signal=USR2@120" in script or "--signal=USR1@120" in script

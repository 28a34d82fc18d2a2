"""Two CPU processes (gloo, ddp_spawn) through the real CLI give the loss curve of one process with
the same global batch: each rank takes its rows of every global batch and gradients are averaged."""

import csv
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARGS = ["experiment=demo_zh", "debug=smoke", "trainer.max_steps=6", "eval.every_n_steps=3",
        "trainer.log_every_n_steps=1", "optim.grad_clip=null"]


def run(run_dir, *extra):
    proc = subprocess.run([sys.executable, "-m", "cptlab.train", *ARGS, *extra, f"hydra.run.dir={run_dir}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return {(int(r["step"]), k): float(v) for r in rows for k, v in r.items()
            if v and k != "step" and k != "train/tokens_per_sec" and r.get(k)}


def test_cpu_ddp_matches_single_process(tmp_path):
    single = run(tmp_path / "single")
    ddp = run(tmp_path / "ddp", "trainer=ddp", "trainer.accelerator=cpu", "trainer.strategy=ddp_spawn",
              "trainer.devices=2", "trainer.precision=32-true", "trainer.max_steps=6")
    assert set(single) == set(ddp)
    for key, value in single.items():
        assert ddp[key] == pytest.approx(value, rel=1e-4, abs=1e-5), key
    assert (tmp_path / "ddp" / "summary.json").exists()

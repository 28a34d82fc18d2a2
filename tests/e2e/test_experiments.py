"""Every experiment composes and trains under debug=smoke (in-process, to share the corpus cache)."""

import json
from pathlib import Path

import pytest

from cptlab.run.summary import read_summary

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_smoke_runs(compose_cfg, tmp_path, experiment):
    from cptlab.train import train

    run_dir = tmp_path / experiment
    cfg = compose_cfg([f"experiment={experiment}", "debug=smoke"], output_dir=run_dir)
    summary, reporter = train(cfg, run_dir)
    assert reporter and summary["status"] == "completed"
    assert summary["steps"] == cfg.trainer.max_steps
    for name, d in summary["domains"].items():
        assert d["bpb_start"] > 0 and d["bpb_end"] > 0, name
    new = [n for n, d in summary["domains"].items() if d["role"] == "new"]
    assert new and all(summary["domains"][n]["delta_bpb"] < 0 for n in new)  # a few steps already learn
    json.dumps(summary)  # serialisable as summary.json
    assert (run_dir / "metrics.csv").exists() and (run_dir / "checkpoints" / "last.ckpt").exists()
    assert read_summary(run_dir) == summary
    assert (run_dir / "report.md").exists() and (run_dir / "forgetting_curve.png").exists()

"""cptlab-compare with evaluation-only domains (role eval: an old domain) and downstream-task metrics
(val/harness/<task>/<metric>): rows per configuration and metric, seeds pooled into mean ± 95% interval."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from cptlab.cli.compare import compare
from cptlab.compare.runs import load_runs, resolve_roles
from cptlab.compare.stats import mean_ci

# (replay ratio, seed) -> accuracy of task "probe" at steps 0, 10, 20; en_eval bpb likewise
ACC = {("0", 0): [0.40, 0.36, 0.30], ("0", 1): [0.40, 0.34, 0.32],
       ("0.25", 0): [0.40, 0.39, 0.38], ("0.25", 1): [0.40, 0.40, 0.37]}


def write_run(run_dir: Path, ratio: str, seed: int) -> None:
    run_dir.mkdir(parents=True)
    overrides = [f"data.replay_ratio={ratio}", f"seed={seed}"]
    (run_dir / ".hydra").mkdir()
    (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    roles = {"zh": "new", "en": "replay", "en_eval": "eval"}
    (run_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump({
        "name": "demo_zh", "seed": seed, "data": {"replay_ratio": float(ratio), "domains": {
            d: {"role": r, "sources": [f"demo:{d}"]} for d, r in roles.items()}}}))
    acc = ACC[(ratio, seed)]
    rows = []
    for i, step in enumerate((0, 10, 20)):
        rows.append({"step": step, "trainer/tokens_seen": step * 100, "val/zh/bpb": 3.0 - 0.1 * i,
                     "val/zh/delta_bpb": -0.1 * i, "val/en/bpb": 2.0, "val/en/delta_bpb": 0.0,
                     "val/en_eval/bpb": 2.5 + (0.1 if ratio == "0" else 0.02) * i,
                     "val/en_eval/delta_bpb": (0.1 if ratio == "0" else 0.02) * i})
        rows.append({"step": step, "trainer/tokens_seen": step * 100, "val/harness/probe/acc": acc[i],
                     "val/harness/probe/acc_stderr": 0.05})
    columns = sorted({k for r in rows for k in r} - {"step"})
    with open(run_dir / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["step", *columns])
        writer.writeheader()
        writer.writerows(rows)
    (run_dir / "summary.json").write_text(json.dumps({
        "status": "completed", "name": "demo_zh", "overrides": overrides, "steps": 20, "replay_ratio": float(ratio),
        "domains": {d: {"role": r} for d, r in roles.items()},
        "harness": {"seconds_per_evaluation": 2.0 + seed}}))


@pytest.fixture
def sweep(tmp_path) -> Path:
    root = tmp_path / "multirun"
    for i, (ratio, seed) in enumerate(ACC):
        write_run(root / str(i), ratio, seed)
    return root


def test_an_eval_domain_is_an_old_domain(sweep):
    roles = resolve_roles(load_runs([sweep]))
    assert roles.new == ["zh"] and roles.old == ["en", "en_eval"]


def test_harness_metrics_are_rows_with_seeds_pooled(sweep, tmp_path):
    written = compare([sweep], out=tmp_path / "out")
    assert {"harness.csv", "harness_curves.png"} <= set(written) and written["harness_curves.png"].stat().st_size
    with open(written["harness.csv"], newline="") as f:
        rows = {row["label"]: row for row in csv.DictReader(f)}
    assert set(rows) == {"data.replay_ratio=0", "data.replay_ratio=0.25"}
    row = rows["data.replay_ratio=0"]
    assert row["metric"] == "probe/acc" and row["n"] == "2" and row["seeds"] == "0,1"
    deltas = mean_ci([0.30 - 0.40, 0.32 - 0.40])
    assert float(row["delta"]) == pytest.approx(deltas.mean) and float(row["delta_ci95"]) == pytest.approx(deltas.ci)
    assert float(row["end"]) == pytest.approx(0.31) and float(row["seconds_per_evaluation"]) == 2.5
    summary = written["summary.md"].read_text()
    assert "## Downstream tasks (lm-evaluation-harness)" in summary and "probe/acc" in summary
    assert "old domain(s): en, en_eval" in summary

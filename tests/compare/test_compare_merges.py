"""cptlab-compare on runs cptlab-merge scored: the merge curve pooled over seeds (mean ± 95% interval) and each
alpha's paired difference from alpha = 1, Holm-adjusted per configuration; kept by --archive and recomputed
from the archive alone."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from cptlab.cli.compare import compare
from cptlab.compare.stats import mean_ci

# alpha = 0.5: per seed, English forgets this much less than the trained end, and Chinese learns this much less.
LESS_FORGETTING = {0: 0.030, 1: 0.034, 2: 0.029}
LESS_LEARNING = {0: 0.20, 1: 0.26, 2: 0.21}


def _score(run: Path, seed: int) -> dict:
    """merge.json as cptlab-merge writes it: alpha 0 = step 0, alpha 1 = the run's end, alpha 0.5 between."""
    summary = json.loads((run / "summary.json").read_text())
    start = {d: r["bpb_start"] for d, r in summary["domains"].items()}
    end = {d: r["bpb_end"] for d, r in summary["domains"].items()}
    half = {"zh": end["zh"] + LESS_LEARNING[seed], "en": end["en"] - LESS_FORGETTING[seed]}
    points = [{"alpha": a, "bpb": bpb} for a, bpb in ((0.0, start), (0.5, half), (1.0, end))]
    record = {"weights": "raw", "roles": {"zh": "new", "en": "replay"}, "step0_bpb": start, "points": points}
    (run / "merge.json").write_text(json.dumps(record))
    return {"start": start, "end": end, "half": half}


@pytest.fixture
def merged_sweep(seeded_sweep) -> tuple[Path, dict]:
    """The seeded sweep with cptlab-merge's scores on the replay_ratio=0.25 runs (seeds 0, 1, 2)."""
    scores = {seed: _score(seeded_sweep / f"data.replay_ratio=0.25,seed={seed}", seed) for seed in (0, 1, 2)}
    return seeded_sweep, scores


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_merge_curve_is_pooled_over_seeds_and_compared_with_the_trained_end(merged_sweep, tmp_path):
    sweep, scores = merged_sweep
    written = compare([sweep], out=tmp_path / "out", plots=False)
    rows = _rows(written["merge.csv"])
    assert [(r["label"], float(r["alpha"]), r["n"]) for r in rows] == [
        ("data.replay_ratio=0.25", 0.0, "3"), ("data.replay_ratio=0.25", 0.5, "3"), ("data.replay_ratio=0.25", 1.0, "3")]
    zero, half, end = rows
    assert float(zero["learning"]) == 0.0 and float(zero["forgetting"]) == 0.0
    forgetting = [s["half"]["en"] - s["start"]["en"] for s in scores.values()]
    est = mean_ci(forgetting)
    assert float(half["forgetting"]) == pytest.approx(est.mean)
    assert float(half["forgetting_ci95"]) == pytest.approx(est.ci)
    # alpha = 1 equals the run's own end, the table's figures for the row
    summary = {r["label"]: r for r in _rows(written["summary.csv"])}["data.replay_ratio=0.25"]
    assert float(end["forgetting"]) == pytest.approx(float(summary["forgetting"]))
    assert float(end["learning"]) == pytest.approx(float(summary["learning"]))
    assert end["forgetting_vs_end_verdict"] == "" and end["forgetting_vs_end"] == ""
    # alpha = 0.5 vs alpha = 1: the per-seed differences, paired (the same runs)
    assert half["forgetting_vs_end_method"] == "paired"
    assert float(half["forgetting_vs_end"]) == pytest.approx(-sum(LESS_FORGETTING.values()) / 3)
    assert float(half["learning_vs_end"]) == pytest.approx(-sum(LESS_LEARNING.values()) / 3)
    assert half["forgetting_vs_end_verdict"] == "difference"
    # Holm over the row's 4 comparisons: no adjusted p below its raw p
    for row in (zero, half):
        for key in ("learning", "forgetting"):
            assert float(row[f"{key}_vs_end_p_holm"]) >= float(row[f"{key}_vs_end_p"])
    assert "## Merge curves" in written["summary.md"].read_text()


def test_runs_without_merge_scores_get_no_merge_table(seeded_sweep, tmp_path):
    written = compare([seeded_sweep], out=tmp_path / "out", plots=False)
    assert "merge.csv" not in written and not (tmp_path / "out" / "merge.csv").exists()


def test_a_row_where_one_seed_lacks_merge_scores_is_left_out(merged_sweep, tmp_path):
    sweep, _ = merged_sweep
    (sweep / "data.replay_ratio=0.25,seed=1" / "merge.json").unlink()
    written = compare([sweep], out=tmp_path / "out", plots=False)
    assert "merge.csv" not in written


def test_the_archive_keeps_merge_scores_and_recomputes_the_merge_table(merged_sweep, tmp_path):
    sweep, _ = merged_sweep
    results = tmp_path / "results"
    compare([sweep], out=results, archive=True, plots=False)
    kept = results / "runs" / "data.replay_ratio=0.25,seed=2" / "merge.json"
    assert kept.read_bytes() == (sweep / "data.replay_ratio=0.25,seed=2" / "merge.json").read_bytes()
    again = compare([results / "runs"], out=tmp_path / "again", plots=False)
    drop = lambda rows: [{k: v for k, v in r.items() if k != "run_dir"} for r in rows]  # noqa: E731
    assert drop(_rows(again["merge.csv"])) == drop(_rows(results / "merge.csv"))

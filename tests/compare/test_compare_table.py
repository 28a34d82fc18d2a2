"""Row metrics against hand-computed values, the Pareto front, summary.md / summary.csv contents."""

import csv
import json

import pytest

from cptlab.compare.runs import Roles, load_runs, resolve_roles
from cptlab.compare.table import build_rows, markdown, pareto_front, write_csv, write_markdown


@pytest.fixture
def rows(sweep):
    runs = load_runs([sweep])
    return build_rows(runs, resolve_roles(runs))


def by_label(rows):
    return {r["label"]: r for r in rows}


def test_learning_forgetting_and_auc_by_hand(rows):
    r = by_label(rows)["data.replay_ratio=0.25"]
    # zh (new) bpb 3.0 -> 2.4 -> 2.1; en (old) bpb 1.5 -> 1.6 -> 1.56 at 0, 204800, 409600 tokens.
    assert r["new_bpb"] == pytest.approx(2.1)
    assert r["learning"] == pytest.approx(0.9)
    assert r["old_bpb"] == pytest.approx(1.56)
    assert r["forgetting"] == pytest.approx(0.06)
    # Trapezoids of Δbpb (0, 0.1, 0.06) over two equal halves, divided by the whole span.
    auc = (204800 * (0 + 0.1) / 2 + 204800 * (0.1 + 0.06) / 2) / 409600
    assert auc == pytest.approx(0.065)
    assert r["forgetting_auc"] == pytest.approx(auc)
    assert (r["steps"], r["tokens_seen"], r["wall_time_s"]) == (100, 409600, 120.25)
    assert r["setup_s"] == pytest.approx(4.25)  # tokenizer + data + model set-up
    assert r["tokens_per_sec"] == pytest.approx(20250.0)


def test_failed_and_unfinished_rows_keep_what_is_known(rows):
    failed = by_label(rows)["data.replay_ratio=0.25, optim.lr=10.0"]
    assert (failed["status"], failed["error"]) == ("failed", "loss is NaN at step 12 (lr too high?)")
    assert failed["new_bpb"] == pytest.approx(3.0) and failed["forgetting_auc"] is None  # step-0 eval only
    assert failed["wall_time_s"] is None and failed["setup_s"] is None and failed["pareto_front"] is None
    unfinished = by_label(rows)["data.replay_ratio=0.75"]
    assert unfinished["status"] == "unfinished" and unfinished["error"] is None
    # The latest values the partial metrics.csv has: evals at steps 0 and 50, train rows up to 60.
    assert unfinished["new_bpb"] == pytest.approx(2.7) and unfinished["learning"] == pytest.approx(0.3)
    assert unfinished["forgetting"] == pytest.approx(0.02) and unfinished["forgetting_auc"] == pytest.approx(0.01)
    assert unfinished["steps"] == 60 and unfinished["tokens_seen"] == 60 * 4096
    assert unfinished["tokens_per_sec"] == pytest.approx(20035.0)  # mean of the logged rates


def test_pareto_front_constructed():
    points = [(0.10, 1.0),   # most learning -> front
              (0.05, 0.8),   # front: less forgetting than the first
              (0.05, 0.6),   # dominated by (0.05, 0.8): same forgetting, less learning
              (0.00, 0.2),   # least forgetting -> front
              (0.20, 0.9),   # dominated by (0.10, 1.0)
              (0.05, 0.8)]   # a tie with a front point: neither dominates the other
    assert pareto_front(points) == [0, 1, 3, 5]
    assert pareto_front([]) == []


def test_pareto_column_in_rows(rows):
    front = {r["label"] for r in rows if r["pareto_front"]}
    assert front == {"data.replay_ratio=0.1", "data.replay_ratio=0.25"}
    assert by_label(rows)["data.replay_ratio=0.5"]["pareto_front"] is False


def test_summary_csv_and_md(sweep, rows, tmp_path):
    roles = Roles(new=["zh"], old=["en"])
    write_csv(tmp_path / "summary.csv", rows)
    with open(tmp_path / "summary.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 5
    assert [(t["label"], t["status"]) for t in table] == [
        ("data.replay_ratio=0.1", "completed"), ("data.replay_ratio=0.25", "completed"),
        ("data.replay_ratio=0.25, optim.lr=10.0", "failed"), ("data.replay_ratio=0.5", "completed"),
        ("data.replay_ratio=0.75", "unfinished")]
    assert not any("hydra" in t["label"] or "experiment" in t["label"] for t in table)
    assert float(table[1]["forgetting_auc"]) == pytest.approx(0.065)
    assert table[2]["wall_time_s"] == "" and table[2]["error"].startswith("loss is NaN")
    write_markdown(tmp_path / "summary.md", rows, roles)
    md = (tmp_path / "summary.md").read_text()
    assert md == markdown(rows, roles)
    table_lines = [line for line in md.splitlines() if line.startswith("| data.")]
    assert len(table_lines) == 5
    assert "| failed: loss is NaN at step 12 (lr too high?) |" in table_lines[2]
    assert "| unfinished |" in table_lines[4] and "| - |" in table_lines[4]  # no wall time yet
    assert "new bpb (zh)" in md and "old bpb (en)" in md and "![learning vs forgetting](tradeoff.png)" in md


def test_swapped_roles_change_the_numbers(sweep):
    runs = load_runs([sweep])
    r = by_label(build_rows(runs, resolve_roles(runs, old=["zh"], new=["en"])))["data.replay_ratio=0.25"]
    assert r["learning"] == pytest.approx(-0.06) and r["forgetting"] == pytest.approx(-0.9)


def test_diverged_completed_run_stays_off_the_front(sweep):
    path = sweep / "2" / "summary.json"
    summary = json.loads(path.read_text())
    summary["domains"]["zh"]["bpb_end"] = float("nan")
    path.write_text(json.dumps(summary))  # json writes NaN, as the train loop's summary would
    runs = load_runs([sweep])
    r = by_label(build_rows(runs, resolve_roles(runs)))["data.replay_ratio=0.5"]
    assert r["status"] == "completed" and r["pareto_front"] is None

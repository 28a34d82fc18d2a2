"""Finding runs under sweep dirs, their status, labels from differing overrides, sweep order, roles."""

import shutil

import pytest

from cptlab.compare.runs import find_run_dirs, load_runs, resolve_roles
from cptlab.errors import CptlabError

LABELS = ["data.replay_ratio=0.1", "data.replay_ratio=0.25", "data.replay_ratio=0.25, optim.lr=10.0",
          "data.replay_ratio=0.5", "data.replay_ratio=0.75"]


def test_finds_every_run_but_not_their_subdirectories(sweep):
    found = find_run_dirs([sweep.parent])  # the date dir: runs are two levels down
    assert [p.name for p in found] == ["0", "1", "2", "3", "4"]
    assert find_run_dirs([sweep / "2"]) == [sweep / "2"]
    assert find_run_dirs([sweep, sweep / "2"]) == find_run_dirs([sweep])  # a run given twice counts once


def test_statuses_labels_and_sweep_order(sweep):
    runs = load_runs([sweep])
    # Sorted by the differing overrides' values, numerically: 0.1 < 0.25 < 0.5 (not as strings), and a
    # run without optim.lr before the one with it.
    assert [r.label for r in runs] == LABELS
    assert [r.status for r in runs] == ["completed", "completed", "failed", "completed", "unfinished"]
    failed = runs[2]
    assert failed.error == "loss is NaN at step 12 (lr too high?)"
    assert runs[4].summary == {} and runs[4].latest("trainer/tokens_seen") == 60 * 16 * 256


def test_labels_fall_back_to_run_dir_names_when_overrides_agree(sweep):
    runs = load_runs([sweep / "1", sweep / "3"])  # both data.replay_ratio=0.25; only optim.lr differs
    assert [r.label for r in runs] == ["1", "optim.lr=10.0"]
    same = load_runs([sweep / "1"])
    assert same[0].label == "1"


def test_running_status_counts_as_unfinished(sweep):
    (sweep / "0" / "summary.json").write_text('{"status": "running", "error": null}')
    assert load_runs([sweep / "0"])[0].status == "unfinished"


def test_roles_from_config_and_from_flags(sweep):
    runs = load_runs([sweep])
    roles = resolve_roles(runs)
    assert (roles.new, roles.old) == (["zh"], ["en"])
    swapped = resolve_roles(runs, old=["zh"], new=["en"])
    assert (swapped.new, swapped.old) == (["en"], ["zh"])
    only_new = resolve_roles(runs, new=["en"])  # en leaves the old list when named new
    assert (only_new.new, only_new.old) == (["en"], [])
    with pytest.raises(CptlabError, match="no run has domain fr"):
        resolve_roles(runs, old=["fr"])


def test_roles_without_config_need_flags(sweep):
    for job in range(5):
        (sweep / str(job) / ".hydra" / "config.yaml").unlink()
    runs = load_runs([sweep / "4"])  # unfinished: no summary.json to fall back on either
    with pytest.raises(CptlabError, match="pass --old and --new"):
        resolve_roles(runs)
    roles = resolve_roles(runs, old=["en"], new=["zh"])
    assert (roles.new, roles.old) == (["zh"], ["en"])


def test_missing_path_and_empty_dir_are_one_line_errors(tmp_path):
    with pytest.raises(CptlabError, match="does not exist"):
        find_run_dirs([tmp_path / "nope"])
    (tmp_path / "empty" / "a" / "b" / "c").mkdir(parents=True)
    (tmp_path / "empty" / "a" / "b" / "c" / "summary.json").write_text("{}")  # three levels down: too deep
    with pytest.raises(CptlabError, match="no run under"):
        find_run_dirs([tmp_path / "empty"])


def test_same_overrides_in_two_sweeps_get_told_apart(sweep, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(sweep / "1", other / "1")
    labels = [r.label for r in load_runs([sweep / "0", sweep / "1", other / "1"])]
    assert labels[0] == "data.replay_ratio=0.1"
    assert sorted(labels[1:]) == sorted([f"data.replay_ratio=0.25 [{sweep.name}/1]",
                                         "data.replay_ratio=0.25 [other/1]"])


def test_half_written_metrics_csv_is_a_warning_not_a_crash(sweep):
    with open(sweep / "4" / "metrics.csv", "a") as f:
        f.write("1e-3,70,2.3e")  # a live run caught mid-write
    run = load_runs([sweep / "4"])[0]
    assert run.series == {} and run.status == "unfinished"
    assert "metrics.csv: unreadable" in run.warnings[0]


def test_ema_weights_are_compared_as_a_run_of_their_own(sweep):
    # A retention=ema run also logs val_ema/<domain>/* at each evaluation: add those columns to one run.
    import csv

    path = sweep / "1"
    with open(path / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    ema = {"0": 1.5, "50": 1.52, "100": 1.53}  # en under the EMA weights; zh below
    for row in rows:
        if row["val/en/bpb"]:
            row["val_ema/en/bpb"] = ema[row["step"]]
            row["val_ema/en/delta_bpb"] = ema[row["step"]] - 1.5
            row["val_ema/zh/bpb"] = float(row["val/zh/bpb"]) + 0.1
    with open(path / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[*rows[0].keys(), "val_ema/en/bpb", "val_ema/en/delta_bpb",
                                               "val_ema/zh/bpb"])
        writer.writeheader()
        writer.writerows(rows)
    runs = load_runs([sweep])
    labels = [r.label for r in runs]
    raw = labels.index("data.replay_ratio=0.25")
    assert labels[raw + 1] == "data.replay_ratio=0.25 · EMA weights" and len(runs) == 6
    view = runs[raw + 1]
    assert view.domain_bpb("en") == pytest.approx({"bpb_start": 1.5, "bpb_end": 1.53, "delta_bpb": 0.03})
    assert view.domain_bpb("zh")["bpb_end"] == pytest.approx(2.2)
    assert runs[raw].domain_bpb("en")["bpb_end"] == pytest.approx(1.56)  # the raw weights are unchanged

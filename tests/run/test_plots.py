"""The per-run forgetting-curve picture draws what metrics.csv holds: one line per domain whose points are
(trainer/tokens_seen, val/<domain>/bpb) at each evaluation -- bpb, not delta_bpb or loss -- solid for the
new domain, dashed for the old one."""

from __future__ import annotations

import csv

import matplotlib.figure
import pytest

from cptlab.run.plots import plot_forgetting_curve

COLUMNS = ["step", "train/loss", "trainer/tokens_seen", "val/en/bpb", "val/en/delta_bpb", "val/en/loss",
           "val/zh/bpb", "val/zh/delta_bpb", "val/zh/loss"]
TOKENS_PER_STEP = 512
# step -> held-out bpb per domain (zh learned, en forgotten)
EVALS = {0: {"zh": 3.0, "en": 1.5}, 4: {"zh": 2.5, "en": 1.625}, 8: {"zh": 2.25, "en": 1.75}}


def write_run(run_dir):
    """metrics.csv as the run's logger writes it: train rows and eval rows apart, other columns empty."""
    rows = []
    for step in (2, 4, 6, 8):
        rows.append({"step": step, "train/loss": 4.0 - step / 10, "trainer/tokens_seen": step * TOKENS_PER_STEP})
    for step, values in EVALS.items():
        row = {"step": step, "trainer/tokens_seen": step * TOKENS_PER_STEP}
        for domain, bpb in values.items():
            row |= {f"val/{domain}/bpb": bpb, f"val/{domain}/delta_bpb": bpb - EVALS[0][domain],
                    f"val/{domain}/loss": bpb * 2.0}
        rows.append(row)
    run_dir.mkdir()
    with open(run_dir / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


@pytest.fixture
def saved_figures(monkeypatch):
    """The Figure objects the code under test saves (the real savefig still runs)."""
    figures, real = [], matplotlib.figure.Figure.savefig

    def savefig(self, *args, **kwargs):
        figures.append(self)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
    return figures


def test_forgetting_curve_plots_tokens_seen_against_bpb(tmp_path, saved_figures):
    run_dir = tmp_path / "run"
    write_run(run_dir)
    out = plot_forgetting_curve(run_dir, {"zh": "new", "en": "replay"}, title="t")
    assert out == run_dir / "forgetting_curve.png" and out.read_bytes().startswith(b"\x89PNG")
    (fig,) = saved_figures
    (ax,) = fig.axes
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert set(lines) == {"zh (new)", "en (replay)"}
    steps = sorted(EVALS)
    for domain, role, style in (("zh", "new", "-"), ("en", "replay", "--")):
        line = lines[f"{domain} ({role})"]
        assert list(line.get_xdata()) == [s * TOKENS_PER_STEP for s in steps]
        assert list(line.get_ydata()) == [EVALS[s][domain] for s in steps]
        assert line.get_linestyle() == style
    assert "bits per byte" in ax.get_ylabel() and "tokens" in ax.get_xlabel()


def test_a_domain_without_evaluations_draws_no_line(tmp_path, saved_figures):
    run_dir = tmp_path / "run"
    write_run(run_dir)
    plot_forgetting_curve(run_dir, {"zh": "new", "code": "replay"})
    (fig,) = saved_figures
    assert [line.get_label() for line in fig.axes[0].get_lines()] == ["zh (new)"]


def test_harness_metrics_get_a_panel_of_their_own(tmp_path, saved_figures):
    """A run that scored downstream tasks: a second panel, one line per task metric at its evaluations (its
    stderr as error bars; the stderr and the cost per evaluation are not lines of their own)."""
    run_dir = tmp_path / "run"
    write_run(run_dir)
    path = run_dir / "metrics.csv"
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    harness = {"val/harness/zh_polarity/acc": [0.5, 0.6, 0.7], "val/harness/zh_polarity/acc_stderr": [0.05] * 3,
               "val/harness/seconds": [1.0, 1.1, 1.2]}
    evals = [r for r in rows if r["val/en/bpb"]]
    for i, row in enumerate(evals):
        row.update({k: v[i] for k, v in harness.items()})
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS + list(harness))
        writer.writeheader()
        writer.writerows(rows)
    plot_forgetting_curve(run_dir, {"zh": "new", "en": "replay"})
    (fig,) = saved_figures
    assert len(fig.axes) == 2
    (bars,) = fig.axes[1].containers  # an errorbar: its label on the container, the data line its first part
    assert bars.get_label() == "zh_polarity/acc"
    line = bars.lines[0]
    assert list(line.get_xdata()) == [s * TOKENS_PER_STEP for s in sorted(EVALS)]
    assert list(line.get_ydata()) == [0.5, 0.6, 0.7]


def test_a_run_without_harness_metrics_has_one_panel(tmp_path, saved_figures):
    run_dir = tmp_path / "run"
    write_run(run_dir)
    plot_forgetting_curve(run_dir, {"zh": "new"})
    assert len(saved_figures[0].axes) == 1

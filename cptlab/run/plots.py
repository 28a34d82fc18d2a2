"""The per-run forgetting-curve picture: each domain's held-out bits per byte against tokens seen and, when the
run scored downstream tasks (eval.harness), a second panel with each task metric (± its stderr) on the same axis."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from cptlab.rundir.layout import PLOT  # noqa: E402
from cptlab.rundir.metrics import eval_curve, read_series  # noqa: E402
from cptlab.utils.io import save_figure  # noqa: E402

HARNESS = "val/harness/"


def harness_metrics(series: dict) -> list[str]:
    """"task/metric" of each harness metric in the series (their stderr and the cost per evaluation left out)."""
    names = [key[len(HARNESS):] for key in series if key.startswith(HARNESS)]
    return sorted(n for n in names if "/" in n and not n.endswith("_stderr"))


def plot_forgetting_curve(run_dir: Path, roles: dict[str, str], title: str = "") -> Path:
    """Write `run_dir/forgetting_curve.png`: one line per domain, solid for new, dashed for replay/old; and a
    panel of the harness task metrics beside it when the run logged any."""
    run_dir = Path(run_dir)
    series = read_series(run_dir)
    tasks = harness_metrics(series)
    fig, axes = plt.subplots(1, 2 if tasks else 1, figsize=(12 if tasks else 7, 4.2), dpi=120, squeeze=False)
    ax = axes[0][0]
    for domain, role in roles.items():
        x, y = eval_curve(series, domain)
        if x:
            ax.plot(x, y, marker="o", ms=3, ls="-" if role == "new" else "--", label=f"{domain} ({role})")
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("held-out bits per byte")
    ax.set_title(title or run_dir.name, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    if tasks:
        _harness_panel(axes[0][1], series, tasks)
    fig.tight_layout()
    return save_figure(fig, run_dir / PLOT)


def _harness_panel(ax, series: dict, tasks: list[str]) -> None:
    tokens = dict(series.get("trainer/tokens_seen", []))
    for name in tasks:
        points = series[HARNESS + name]
        errors = dict(series.get(f"{HARNESS}{name}_stderr", []))
        x = [tokens.get(step, float("nan")) for step, _ in points]
        y = [v for _, v in points]
        yerr = [errors.get(step, 0.0) for step, _ in points]
        ax.errorbar(x, y, yerr=yerr, marker="o", ms=3, capsize=2, label=name)
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("task metric (± stderr)")
    ax.set_title("downstream tasks (lm-evaluation-harness)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)

"""The sweep's two pictures: every run's forgetting curves side by side (forgetting_curves.png) and
learning against forgetting with the Pareto front (tradeoff.png)."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import EngFormatter  # noqa: E402

from cptlab.compare.runs import Roles, Run  # noqa: E402
from cptlab.utils.io import atomic_write_bytes  # noqa: E402


def run_colors(n: int) -> list:
    """One colour per run, the same in both pictures; distinct up to 20 runs, a gradient beyond."""
    if n <= 10:
        return [matplotlib.colormaps["tab10"](i) for i in range(n)]
    if n <= 20:
        return [matplotlib.colormaps["tab20"](i) for i in range(n)]
    return [matplotlib.colormaps["viridis"](i / (n - 1)) for i in range(n)]


def _save(fig, path: Path) -> Path:
    buf = io.BytesIO()
    # "tight" grows the canvas to take in the legend placed outside the axes.
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def plot_forgetting_curves(runs: list[Run], roles: Roles, path: Path) -> dict[str, list[str]]:
    """One subplot per domain (new ones first), held-out bpb against tokens seen, a line per run
    (dotted for a failed or unfinished run). Returns {domain: labels of the lines drawn}."""
    domains = [(d, "new") for d in roles.new] + [(d, "old") for d in roles.old]
    fig, axes = plt.subplots(1, max(len(domains), 1), figsize=(max(6.0, 5.0 * len(domains)), 4.4), dpi=120,
                             squeeze=False)
    colors = run_colors(len(runs))
    legend: dict[str, object] = {}
    drawn: dict[str, list[str]] = {}
    for ax, (domain, kind) in zip(axes[0], domains):
        for run, color in zip(runs, colors):
            x, y = run.curve(domain)
            if not x:
                continue
            label = run.label if run.status == "completed" else f"{run.label} ({run.status})"
            (line,) = ax.plot(x, y, color=color, marker="o", ms=3, lw=1.6,
                              ls="-" if run.status == "completed" else ":", label=label)
            legend.setdefault(label, line)
        drawn[domain] = [line.get_label() for line in ax.get_lines()]
        what = "new domain: learning, lower is better" if kind == "new" else "old domain: rising = forgetting"
        ax.set_title(f"{domain} ({what})", fontsize=10)
        ax.set_xlabel("tokens seen")
        ax.xaxis.set_major_formatter(EngFormatter(sep=""))  # 200k, 1.5M rather than 1500000
        ax.set_ylabel("held-out bits per byte")
        ax.grid(alpha=0.3)
        if not ax.get_lines():
            ax.text(0.5, 0.5, "no evaluation logged yet", ha="center", va="center", transform=ax.transAxes)
    if not domains:
        axes[0][0].text(0.5, 0.5, "no domains to plot", ha="center", va="center")
    fig.suptitle("forgetting curves: held-out bits per byte vs tokens seen, one line per run")
    if legend:
        # One legend for all subplots (the runs are the same in each), below them so long labels fit.
        fig.legend(list(legend.values()), list(legend), loc="upper center", bbox_to_anchor=(0.5, 0.0),
                   ncol=min(len(legend), max(1, len(domains)) + 1), fontsize=8, frameon=False)
    fig.tight_layout()
    _save(fig, path)
    return drawn


def plot_tradeoff(rows: list[dict], roles: Roles, path: Path) -> dict[str, list[str]]:
    """Learning (new-domain bpb drop, up is better) against forgetting (old-domain Δbpb, left is
    better), one labelled point per completed run, Pareto front highlighted.
    Returns {"points": labels plotted, "front": labels on the Pareto front}."""
    colors = run_colors(len(rows))
    # build_rows decided which runs compete (pareto_front not None) and which are on the front.
    scored = [i for i, r in enumerate(rows) if r["pareto_front"] is not None]
    front = [i for i in scored if rows[i]["pareto_front"]]
    fig, ax = plt.subplots(figsize=(7.5, 5.2), dpi=120)
    ax.axvline(0, color="grey", lw=0.8, ls="--")
    ax.axhline(0, color="grey", lw=0.8, ls="--")
    if front:
        xy = sorted((rows[i]["forgetting"], rows[i]["learning"]) for i in front)
        ax.plot([p[0] for p in xy], [p[1] for p in xy], color="crimson", lw=2, alpha=0.6, zorder=2,
                label="Pareto front (not dominated)")
    for i in scored:
        on_front = i in front
        ax.scatter(rows[i]["forgetting"], rows[i]["learning"], color=colors[i], zorder=3,
                   s=130 if on_front else 45, marker="*" if on_front else "o",
                   edgecolors="crimson" if on_front else "none", linewidths=1.2)
        ax.annotate(rows[i]["label"], (rows[i]["forgetting"], rows[i]["learning"]), xytext=(6, 5),
                    textcoords="offset points", fontsize=8, fontweight="bold" if on_front else "normal")
    if not scored:
        ax.text(0.5, 0.5, "no completed run has both a learning and a forgetting value", ha="center",
                va="center", transform=ax.transAxes)
    else:
        ax.margins(0.15)  # room for the point labels
    new, old = ", ".join(roles.new) or "-", ", ".join(roles.old) or "-"
    ax.set_xlabel(f"forgetting: old-domain Δbpb at end ({old}) → more forgetting")
    ax.set_ylabel(f"learning: new-domain bpb drop ({new}) ↑ better")
    ax.set_title("learning vs forgetting (completed runs; best = top left)", fontsize=10)
    ax.grid(alpha=0.3)
    if front:
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    _save(fig, path)
    return {"points": [rows[i]["label"] for i in scored], "front": [rows[i]["label"] for i in front]}

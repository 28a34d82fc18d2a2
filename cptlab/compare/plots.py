"""The sweep's two pictures: every configuration's forgetting curves side by side, mean over seeds with a
95% band (forgetting_curves.png), and learning against forgetting with error bars and the Pareto front
(tradeoff.png)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import EngFormatter  # noqa: E402
from matplotlib.transforms import Bbox  # noqa: E402

from cptlab.compare.runs import Group, Roles, Run, group_runs  # noqa: E402
from cptlab.compare.stats import mean_ci  # noqa: E402
from cptlab.utils.io import save_figure  # noqa: E402


def run_colors(n: int) -> list:
    """One colour per run, the same in both pictures; distinct up to 20 runs, a gradient beyond."""
    if n <= 10:
        return [matplotlib.colormaps["tab10"](i) for i in range(n)]
    if n <= 20:
        return [matplotlib.colormaps["tab20"](i) for i in range(n)]
    return [matplotlib.colormaps["viridis"](i / (n - 1)) for i in range(n)]


def _save(fig, path: Path) -> Path:
    return save_figure(fig, path, bbox_inches="tight")  # "tight": the canvas takes in the legend outside the axes


def _group_curve(group: Group, domain: str, metric: str) -> tuple[list[float], list[float], list[float] | None]:
    """(tokens seen, mean, 95% half-width or None) of a group's curve of val/<domain>/<metric> at the
    evaluations every run of the group has (seeds of one configuration evaluate at the same steps)."""
    curves = []
    for run in group.runs:
        xs, ys = run.curve(domain, metric)
        if not xs and metric == "delta_bpb":  # older metrics.csv without delta_bpb: from the first evaluation
            xs, bpb = run.curve(domain)
            ys = [v - bpb[0] for v in bpb]
        curves.append(dict(zip(xs, ys)))
    common = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
    if len(curves) == 1:
        return common, [curves[0][x] for x in common], None
    estimates = [mean_ci([c[x] for c in curves]) for x in common]
    return common, [e.mean for e in estimates], [e.ci or 0.0 for e in estimates]


def plot_forgetting_curves(runs: list[Run] | list[Group], roles: Roles, path: Path) -> dict[str, list[str]]:
    """One subplot per domain (new ones first): the new domain's held-out bpb and the old domain's Δbpb
    (bpb minus its step-0 value, so forgetting is drawn at its own scale) against tokens seen. A line per
    row: the mean over its seeds with a shaded 95% band; dotted for a failed or unfinished run.
    Returns {domain: labels of the lines drawn}."""
    groups = runs if all(isinstance(g, Group) for g in runs) else group_runs(runs)
    domains = [(d, "new") for d in roles.new] + [(d, "old") for d in roles.old]
    fig, axes = plt.subplots(1, max(len(domains), 1), figsize=(max(6.0, 5.2 * len(domains)), 4.6), dpi=120,
                             squeeze=False)
    colors = run_colors(len(groups))
    legend: dict[str, object] = {}
    drawn: dict[str, list[str]] = {}
    for ax, (domain, kind) in zip(axes[0], domains):
        metric = "bpb" if kind == "new" else "delta_bpb"
        for group, color in zip(groups, colors):
            x, y, ci = _group_curve(group, domain, metric)
            if not x:
                continue
            done = group.status == "completed"
            label = group.label if done else f"{group.label} ({group.status})"
            if len(group.runs) > 1:
                label += f" (n={len(group.runs)})"
            (line,) = ax.plot(x, y, color=color, marker="o", ms=3, lw=1.6, ls="-" if done else ":", label=label)
            if ci is not None:
                ax.fill_between(x, [m - h for m, h in zip(y, ci)], [m + h for m, h in zip(y, ci)], color=color,
                                alpha=0.18, lw=0)
            legend.setdefault(label, line)
        drawn[domain] = [line.get_label() for line in ax.get_lines()]
        if kind == "new":
            ax.set_title(f"{domain} (new domain): learning, lower is better", fontsize=10)
            ax.set_ylabel("held-out bits per byte")
        else:
            ax.axhline(0, color="grey", lw=0.8, ls="--")
            ax.set_title(f"{domain} (old domain): above 0 = forgetting", fontsize=10)
            ax.set_ylabel("held-out Δ bits per byte vs step 0")
        ax.set_xlabel("tokens seen")
        ax.xaxis.set_major_formatter(EngFormatter(sep=""))  # 200k, 1.5M rather than 1500000
        ax.grid(alpha=0.3)
        if not drawn[domain]:
            ax.text(0.5, 0.5, "no evaluation logged yet", ha="center", va="center", transform=ax.transAxes)
    if not domains:
        axes[0][0].text(0.5, 0.5, "no domains to plot", ha="center", va="center")
    bands = any(len(g.runs) > 1 for g in groups)
    fig.suptitle("forgetting curves vs tokens seen, one line per configuration"
                 + (" (mean over seeds, shaded: 95% interval)" if bands else ""))
    if legend:
        # One legend for all subplots (the rows are the same in each), below them so long labels fit.
        fig.legend(list(legend.values()), list(legend), loc="upper center", bbox_to_anchor=(0.5, 0.0),
                   ncol=min(len(legend), max(1, len(domains)) + 1), fontsize=8, frameon=False)
    fig.tight_layout()
    _save(fig, path)
    return drawn


def _limits(values: list[float], errors: list[float]) -> tuple[float, float]:
    """Axis limits around the values and their error bars, padded, never narrower than the values' scale
    calls for (so a difference of 0.01 fills the axis instead of sitting on a 0-3 range)."""
    lo = min(v - e for v, e in zip(values, errors))
    hi = max(v + e for v, e in zip(values, errors))
    span = hi - lo
    if span <= 0:
        span = max(abs(hi) * 0.05, 1e-3)
    return lo - 0.18 * span, hi + 0.18 * span


# Where a point's label may go, in points from the point, tried in order until one overlaps nothing.
_LABEL_OFFSETS = [(7, 5), (7, -13), (-7, 5), (-7, -13), (7, 17), (7, -25), (-7, 17), (-7, -25), (0, 29),
                  (0, -37), (14, 29), (-14, -37), (14, 41), (-14, -49)]


def _overlap(a, b) -> float:
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    return w * h if w > 0 and h > 0 else 0.0


def place_labels(ax, points: list[tuple[float, float]], labels: list[str], bold: list[bool]) -> tuple[list, bool]:
    """Annotate each point with its label at the first offset whose text overlaps no point and no label
    already placed and stays inside the axes (the least-overlapping one when none is free); labels moved
    away from their point get a thin leader line. Returns the annotations and whether any of them overlaps
    or leaves the axes."""
    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    marker = 7.0 * fig.dpi / 72  # half a marker, in pixels
    taken = []
    for x, y in points:
        px, py = ax.transData.transform((x, y))
        taken.append(Bbox.from_extents(px - marker, py - marker, px + marker, py + marker))
    placed, clash = [], False
    order = sorted(range(len(points)), key=lambda i: (-points[i][1], points[i][0]))
    for i in order:
        best = None
        for k, (dx, dy) in enumerate(_LABEL_OFFSETS):
            text = ax.annotate(labels[i], points[i], xytext=(dx, dy), textcoords="offset points", fontsize=8,
                               ha="left" if dx > 0 else "right" if dx < 0 else "center", va="bottom",
                               fontweight="bold" if bold[i] else "normal", zorder=4,
                               arrowprops=dict(arrowstyle="-", lw=0.5, color="grey") if k >= 4 else None)
            box = text.get_window_extent(renderer)
            outside = (max(0.0, frame.x0 - box.x0) + max(0.0, box.x1 - frame.x1)
                       + max(0.0, frame.y0 - box.y0) + max(0.0, box.y1 - frame.y1))
            cost = sum(_overlap(box, other) for other in taken) + 1e3 * outside
            if best is None or cost < best[0]:
                if best is not None:
                    best[1].remove()
                best = (cost, text, box)
            else:
                text.remove()
            if cost == 0:
                break
        taken.append(best[2])
        placed.append(best[1])
        clash = clash or best[0] > 0
    return placed, clash


def same_point_labels(rows: list[dict], scored: list[int]) -> dict[int, str]:
    """One label per distinct point: rows that land on exactly the same (forgetting, learning) — an EMA run's
    raw weights are bit for bit those of the run without it — share the first row's label, which says how many
    more rows it stands for (the table names them), instead of stacking labels on one spot."""
    groups: dict[tuple[float, float], list[int]] = {}
    for i in scored:
        groups.setdefault((rows[i]["forgetting"], rows[i]["learning"]), []).append(i)
    shown = {}
    for first, *more in groups.values():
        n = rows[first].get("n", 1)
        shown[first] = (rows[first]["label"] + (f" (n={n})" if n > 1 else "")
                        + (f" + {len(more)} more at this point" if more else ""))
    return shown


def merge_curves(rows: list[dict], scored: list[int]) -> dict[int, list[tuple[float, float]]]:
    """Row index -> (forgetting, learning) of each alpha cptlab-merge scored for the row's run (rows of one run):
    the interpolation (towards the raw or the EMA weights) whose alpha=1 end is the row's own point. The points
    are measured from the run's own step 0; a row measured from a common step 0 (table.common_starts) moves
    them by the same offset as its own point."""
    from cptlab.run.merge import read_merge

    curves = {}
    for i in scored:
        dirs = rows[i].get("run_dirs") or []
        for weights in ("raw", "ema") if len(dirs) == 1 else ():
            record = read_merge(dirs[0], weights) or {}
            points = {p["alpha"]: (p["forgetting"], p["learning"]) for p in record.get("points", [])
                      if p.get("forgetting") is not None and p.get("learning") is not None}
            end, run = points.get(1.0), rows[i]["runs"][0]
            own = (run.get("forgetting_own", rows[i]["forgetting"]), run.get("learning_own", rows[i]["learning"]))
            if end and abs(end[0] - own[0]) <= 1e-6 and abs(end[1] - own[1]) <= 1e-6:
                shift = (rows[i]["forgetting"] - own[0], rows[i]["learning"] - own[1])
                curves[i] = [(points[a][0] + shift[0], points[a][1] + shift[1]) for a in sorted(points)]
                break
    return curves


def plot_tradeoff(rows: list[dict], roles: Roles, path: Path) -> dict[str, list[str]]:
    """Learning (new-domain bpb drop, up is better) against forgetting (old-domain Δbpb, left is
    better), one labelled point per completed row with 95% error bars over its seeds, Pareto front
    highlighted; the axes span the points, not zero. Returns {"points": labels plotted, "front": labels
    on the Pareto front}."""
    colors = run_colors(len(rows))
    # build_rows decided which rows compete (pareto_front not None) and which are on the front.
    scored = [i for i, r in enumerate(rows) if r["pareto_front"] is not None]
    front = [i for i in scored if rows[i]["pareto_front"]]
    fig, ax = plt.subplots(figsize=(8.0, 5.6), dpi=120)
    if front:
        xy = sorted((rows[i]["forgetting"], rows[i]["learning"]) for i in front)
        ax.plot([p[0] for p in xy], [p[1] for p in xy], color="crimson", lw=2, alpha=0.6, zorder=2,
                label="Pareto front (not dominated)")
    xerr = [rows[i].get("forgetting_ci") or 0.0 for i in scored]
    yerr = [rows[i].get("learning_ci") or 0.0 for i in scored]
    for k, i in enumerate(scored):
        on_front = i in front
        x, y = rows[i]["forgetting"], rows[i]["learning"]
        if xerr[k] or yerr[k]:
            ax.errorbar(x, y, xerr=xerr[k] or None, yerr=yerr[k] or None, fmt="none", ecolor=colors[i],
                        elinewidth=1.2, capsize=3, alpha=0.8, zorder=2.5)
        ax.scatter(x, y, color=colors[i], zorder=3, s=130 if on_front else 45, marker="*" if on_front else "o",
                   edgecolors="crimson" if on_front else "none", linewidths=1.2)
    merges = merge_curves(rows, scored)
    for i, curve in merges.items():  # cptlab-merge's interpolations of a row's run, beside its point
        ax.plot([c[0] for c in curve], [c[1] for c in curve], color=colors[i], ls="--", lw=1, marker="d", ms=4,
                alpha=0.8, zorder=2, label=f"{rows[i]['label']}: base → trained (α)")
    if not scored:
        ax.text(0.5, 0.5, "no completed run has both a learning and a forgetting value", ha="center",
                va="center", transform=ax.transAxes)
    else:
        extra = [c for curve in merges.values() for c in curve]
        ax.set_xlim(*_limits([rows[i]["forgetting"] for i in scored] + [c[0] for c in extra], xerr + [0.0] * len(extra)))
        ax.set_ylim(*_limits([rows[i]["learning"] for i in scored] + [c[1] for c in extra], yerr + [0.0] * len(extra)))
        (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
        if x0 < 0 < x1:  # the no-forgetting line, only where it falls inside the points' range
            ax.axvline(0, color="grey", lw=0.8, ls="--")
        if y0 < 0 < y1:
            ax.axhline(0, color="grey", lw=0.8, ls="--")
        ax.set_xlim(x0, x1)
        ax.set_ylim(y0, y1)
    new, old = ", ".join(roles.new) or "-", ", ".join(roles.old) or "-"
    ax.set_xlabel(f"forgetting: old-domain Δbpb at end ({old}) → more forgetting")
    ax.set_ylabel(f"learning: new-domain bpb drop ({new}) ↑ better")
    bars = any(xerr) or any(yerr)
    ax.set_title("learning vs forgetting (completed runs; best = top left"
                 + ("; bars: 95% interval over seeds)" if bars else ")"), fontsize=10)
    ax.grid(alpha=0.3)
    if front:
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    if scored:
        shown = same_point_labels(rows, scored)
        points = [(rows[i]["forgetting"], rows[i]["learning"]) for i in shown]
        bold = [i in front for i in shown]
        texts, clash = place_labels(ax, points, list(shown.values()), bold)
        if clash:  # too many or too long to fit beside their points: numbers there, the labels in a key below
            for text in texts:
                text.remove()
            place_labels(ax, points, [str(k) for k in range(1, len(points) + 1)], bold)
            ax.text(0.0, -0.12, "\n".join(f"{k}: {label}" for k, label in enumerate(shown.values(), 1)),
                    transform=ax.transAxes, ha="left", va="top", fontsize=8)
    _save(fig, path)
    return {"points": [rows[i]["label"] for i in scored], "front": [rows[i]["label"] for i in front]}

"""Downstream tasks in the comparison: every `val/harness/<task>/<metric>` the runs logged (lm-evaluation-harness,
cptlab.evaluation.harness), one row per configuration and metric with its value at step 0 and at the end and the change
(mean ± 95% interval over the seeds, like bpb), written as harness.md / harness.csv, and drawn against tokens seen
in harness_curves.png (one panel per task metric, a line per configuration, a band over its seeds)."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cptlab.compare.runs import Group
from cptlab.compare.stats import mean_ci
from cptlab.utils.io import atomic_write_csv

PREFIX = "val/harness/"
NOT_METRICS = ("seconds",)
CSV_FIELDS = ["label", "metric", "n", "seeds", "start", "start_ci95", "end", "end_ci95", "delta", "delta_ci95",
              "seconds_per_evaluation", "run_dir"]


def harness_metrics(groups: list[Group]) -> list[str]:
    """"task/metric" of every harness metric a raw-weights run logged, in first-seen order (stderr left out)."""
    found: dict[str, None] = {}
    for group in groups:
        for run in group.runs:
            if run.view != "raw":
                continue
            for key in run.series:
                name = key[len(PREFIX):]
                if key.startswith(PREFIX) and name not in NOT_METRICS and not name.endswith("_stderr"):
                    found.setdefault(name)
    return list(found)


def _run_values(run, metric: str) -> tuple[float | None, float | None]:
    points = run.series.get(PREFIX + metric) or []
    return (points[0][1], points[-1][1]) if points else (None, None)


def harness_rows(groups: list[Group]) -> list[dict]:
    """One row per (configuration, task metric): start / end / delta as mean and 95% half-width over its runs."""
    rows = []
    for metric in harness_metrics(groups):
        for group in groups:
            values = [_run_values(run, metric) for run in group.runs]
            values = [(s, e) for s, e in values if e is not None]
            if not values:
                continue
            row = {"label": group.label, "metric": metric, "n": len(values), "status": group.status,
                   "seeds": ",".join("-" if s is None else str(s) for s in group.seeds),
                   "run_dir": "; ".join(str(run.path) for run in group.runs)}
            for key, xs in (("start", [s for s, _ in values]), ("end", [e for _, e in values]),
                            ("delta", [e - s for s, e in values if s is not None])):
                est = mean_ci(xs)
                row[key], row[f"{key}_ci"] = est.mean, est.ci
            seconds = [s for run in group.runs
                       if (s := ((run.summary or {}).get("harness") or {}).get("seconds_per_evaluation")) is not None]
            row["seconds_per_evaluation"] = sum(seconds) / len(seconds) if seconds else None  # summary.json's
            rows.append(row)
    return rows


def _cell(row: dict, key: str, spec: str = ".4f") -> str:
    value, ci = row.get(key), row.get(f"{key}_ci")
    if value is None:
        return "-"
    return format(value, spec) if ci is None else f"{format(value, spec)} ± {format(ci, spec.lstrip('+'))}"


HEADERS = ["run", "task / metric", "n", "@ step 0", "@ end", "Δ (end − step 0)", "s / eval"]


def _cells(row: dict) -> list[str]:
    seconds = row.get("seconds_per_evaluation")
    return [row["label"], row["metric"], str(row["n"]), _cell(row, "start"), _cell(row, "end"),
            _cell(row, "delta", "+.4f"), "-" if seconds is None else f"{seconds:.1f}"]


def markdown(rows: list[dict]) -> str:
    lines = ["## Downstream tasks (lm-evaluation-harness)", "",
             "| " + " | ".join(HEADERS) + " |", "|---|---|" + "---:|" * (len(HEADERS) - 2)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in _cells(row)) + " |" for row in rows]
    lines += ["", "- each figure is the mean over the row's seeds ± the half-width of its 95% t-interval; Δ above 0 "
                  "on an accuracy = better than at step 0 (on a task of the old language, below 0 = forgetting).",
              "", "![downstream tasks](harness_curves.png)", ""]
    return "\n".join(lines)


def write_csv(path: Path, rows: list[dict]) -> Path:
    atomic_write_csv(path, CSV_FIELDS, [{**row, **{f"{k}_ci95": row.get(f"{k}_ci") for k in ("start", "end", "delta")}}
                                        for row in rows])
    return Path(path)


def render(rows: list[dict], console: Console) -> None:
    table = Table(title="downstream tasks (lm-evaluation-harness)", title_justify="left",
                  caption="± = 95% interval over seeds (n runs)", caption_justify="left")
    for i, head in enumerate(HEADERS):
        table.add_column(escape(head), justify="left" if i < 2 else "right")
    for row in rows:
        table.add_row(*(escape(c) for c in _cells(row)))
    console.print(table)


def plot_harness_curves(groups: list[Group], path: Path) -> dict[str, list[str]]:
    """One panel per task metric: its value against tokens seen, a line per row (mean over seeds, shaded 95%
    band). Returns {metric: labels drawn}."""
    from cptlab.compare.plots import _group_curve, _save, plt, run_colors

    metrics = harness_metrics(groups)
    fig, axes = plt.subplots(1, max(len(metrics), 1), figsize=(max(6.0, 5.0 * len(metrics)), 4.4), dpi=120,
                             squeeze=False)
    colors = run_colors(len(groups))
    drawn: dict[str, list[str]] = {}
    legend: dict[str, object] = {}
    for ax, metric in zip(axes[0], metrics):
        task, name = metric.rsplit("/", 1)
        for group, color in zip(groups, colors):
            x, y, ci = _group_curve(group, f"harness/{task}", name)
            if not x:
                continue
            label = group.label + (f" (n={len(group.runs)})" if len(group.runs) > 1 else "")
            (line,) = ax.plot(x, y, color=color, marker="o", ms=3, lw=1.6,
                              ls="-" if group.status == "completed" else ":", label=label)
            if ci is not None:
                ax.fill_between(x, [m - h for m, h in zip(y, ci)], [m + h for m, h in zip(y, ci)], color=color,
                                alpha=0.18, lw=0)
            legend.setdefault(label, line)
        drawn[metric] = [line.get_label() for line in ax.get_lines()]
        ax.set_title(f"{task}: {name}", fontsize=10)
        ax.set_xlabel("tokens seen")
        ax.grid(alpha=0.3)
    if not metrics:
        axes[0][0].text(0.5, 0.5, "no harness metrics logged", ha="center", va="center")
    if legend:
        fig.legend(list(legend.values()), list(legend), loc="upper center", bbox_to_anchor=(0.5, 0.0),
                   ncol=min(len(legend), 3), fontsize=8, frameon=False)
    fig.suptitle("downstream tasks vs tokens seen, one line per configuration")
    fig.tight_layout()
    _save(fig, path)
    return drawn

"""One row per run (learning, forgetting, its area under the curve, throughput) and the comparison
table written as summary.md / summary.csv and printed with rich."""

from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path

from rich.console import Console
from rich.table import Table

from cptlab.compare.runs import Roles, Run
from cptlab.utils.io import atomic_write_text

CSV_FIELDS = ["label", "status", "error", "new_bpb", "learning", "old_bpb", "forgetting", "forgetting_auc",
              "pareto_front", "tokens_per_sec", "steps", "tokens_seen", "setup_s", "wall_time_s", "run_dir"]


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _int(value) -> int | None:
    return None if value is None else int(value)


def forgetting_auc(run: Run, domain: str) -> float | None:
    """Mean Δbpb of `domain` over training: the trapezoid area under Δbpb against tokens seen, divided
    by the tokens spanned (first eval is at step 0, so that is the tokens seen)."""
    xs, ys = run.curve(domain, "delta_bpb")
    if not xs:  # older metrics.csv without delta_bpb: measure from the first evaluation
        xs, bpb = run.curve(domain)
        ys = [v - bpb[0] for v in bpb]
    points = sorted(zip(xs, ys))
    span = points[-1][0] - points[0][0] if points else 0.0
    if span <= 0:
        return None
    area = sum((x1 - x0) * (y0 + y1) / 2 for (x0, y0), (x1, y1) in zip(points, points[1:]))
    return area / span


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the (forgetting, learning) points no other point dominates, i.e. none forgets no
    more and learns no less while being strictly better on one of the two."""
    def dominates(a, b):
        return a[0] <= b[0] and a[1] >= b[1] and a != b

    return [i for i, p in enumerate(points) if not any(dominates(q, p) for q in points)]


def build_rows(runs: list[Run], roles: Roles) -> list[dict]:
    """Rows in the runs' order; metrics a run does not have (yet) are None."""
    rows = []
    for run in runs:
        new = [run.domain_bpb(d) for d in roles.new]
        old = [run.domain_bpb(d) for d in roles.old]
        s = run.summary
        token_rates = [v for _, v in run.series.get("train/tokens_per_sec", [])]
        steps = [step for points in run.series.values() for step, _ in points]
        rows.append({
            "label": run.label, "status": run.status, "error": run.error,
            "new_bpb": _mean(d["bpb_end"] for d in new),
            "learning": _mean(d["bpb_start"] - d["bpb_end"] for d in new
                              if d["bpb_start"] is not None and d["bpb_end"] is not None),
            "old_bpb": _mean(d["bpb_end"] for d in old),
            "forgetting": _mean(d["delta_bpb"] for d in old),
            "forgetting_auc": _mean(forgetting_auc(run, d) for d in roles.old),
            "pareto_front": None,  # True/False once set below; None = not a completed run with both numbers
            # The summary's figures for a finished run; for the others what metrics.csv has so far.
            "tokens_per_sec": (s.get("throughput") or {}).get("tokens_per_sec") or _mean(token_rates),
            "steps": _int(s.get("steps", max(steps) if steps else None)),
            "tokens_seen": s.get("tokens_seen", run.latest("trainer/tokens_seen")),
            # Tokenizer + data + model set-up before the first step (None for runs written before it was kept).
            "setup_s": sum((s.get("setup") or {}).values()) if s.get("setup") else None,
            "wall_time_s": s.get("wall_time_s"),
            "run_dir": str(run.path),
        })
    # Only completed runs compete; a diverged run's NaN would otherwise sit on the front (it compares false).
    scored = [i for i, r in enumerate(rows) if r["status"] == "completed"
              and all(r[k] is not None and math.isfinite(r[k]) for k in ("forgetting", "learning"))]
    front = set(pareto_front([(rows[i]["forgetting"], rows[i]["learning"]) for i in scored]))
    for k, i in enumerate(scored):
        rows[i]["pareto_front"] = k in front
    return rows


def headers(roles: Roles) -> list[str]:
    """Column titles; the line breaks keep the printed table narrow (markdown joins them with a space)."""
    new, old = ", ".join(roles.new) or "-", ", ".join(roles.old) or "-"
    return ["run", "status", f"new bpb\n({new})", "learning\n↑", f"old bpb\n({old})", "forgetting\n↓",
            "forgetting\nAUC ↓", "Pareto", "tokens/s", "steps", "set-up\n(s)", "wall\ntime (s)", "run dir"]


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def runs_root(rows: list[dict]) -> Path:
    """The directory all run dirs are under: the table names run dirs relative to it, to stay narrow."""
    paths = [Path(r["run_dir"]).resolve() for r in rows]
    if not paths:
        return Path.cwd()
    root = Path(os.path.commonpath(paths))
    return root.parent if root in paths else root


def cells(row: dict, root: Path) -> list[str]:
    status = f"failed: {row['error']}" if row["status"] == "failed" and row["error"] else row["status"]
    return [row["label"], status, _fmt(row["new_bpb"], ".4f"), _fmt(row["learning"], "+.4f"),
            _fmt(row["old_bpb"], ".4f"), _fmt(row["forgetting"], "+.4f"), _fmt(row["forgetting_auc"], "+.4f"),
            {True: "★", False: ""}.get(row["pareto_front"], "-"), _fmt(row["tokens_per_sec"], ",.0f"),
            _fmt(row["steps"], "d"), _fmt(row["setup_s"], ".1f"), _fmt(row["wall_time_s"], ".1f"),
            os.path.relpath(Path(row["run_dir"]).resolve(), root)]


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: list[dict], roles: Roles) -> str:
    head = [h.replace("\n", " ") for h in headers(roles)]
    lines = ["| " + " | ".join(head) + " |",
             "|" + "|".join("---" if i < 2 or i == len(head) - 1 else "---:" for i in range(len(head))) + "|"]
    root = runs_root(rows)
    lines += ["| " + " | ".join(_md_escape(c) for c in cells(row, root)) + " |" for row in rows]
    return "\n".join(lines)


def markdown(rows: list[dict], roles: Roles) -> str:
    counts = {s: sum(r["status"] == s for r in rows) for s in ("completed", "failed", "unfinished")}
    return "\n".join([
        "# cptlab-compare", "",
        f"New domain(s): {', '.join(roles.new) or '-'} · old domain(s): {', '.join(roles.old) or '-'} · "
        f"{len(rows)} runs ({', '.join(f'{n} {s}' for s, n in counts.items() if n)}), in sweep order "
        f"(sorted by the differing overrides' values); run dirs are under {runs_root(rows)}.", "",
        markdown_table(rows, roles), "",
        "- learning: new-domain bpb at step 0 minus at the end (higher is better).",
        "- forgetting: old-domain Δbpb at the end, bpb minus its step-0 value (above 0 = forgotten).",
        "- forgetting AUC: old-domain Δbpb averaged over training (trapezoid over tokens seen / tokens seen).",
        "- Pareto ★: no other completed run forgets less and learns more. Several domains are averaged.",
        "- failed and unfinished runs show the latest values their metrics.csv has.", "",
        "![forgetting curves](forgetting_curves.png)", "",
        "![learning vs forgetting](tradeoff.png)", ""])


def write_markdown(path: Path, rows: list[dict], roles: Roles) -> Path:
    atomic_write_text(path, markdown(rows, roles))
    return Path(path)


def write_csv(path: Path, rows: list[dict]) -> Path:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row[k] is None else row[k] for k in CSV_FIELDS})
    atomic_write_text(path, buf.getvalue())
    return Path(path)


# Printed columns given up, in this order, when the terminal is too narrow for the whole table: run dir,
# wall time, steps, tokens/s, Pareto, forgetting AUC (summary.md always has them all).
NARROW_DROP = (11, 10, 9, 8, 7, 6)


def _console_table(rows: list[dict], roles: Roles, root: Path, keep: list[int]) -> Table:
    caption = (f"run dirs under {root}" if 11 in keep
               else "some columns left out to fit the terminal; summary.md has them all")
    table = Table(title="cptlab-compare", title_justify="left", caption=caption, caption_justify="left")
    heads = headers(roles)
    for i in keep:
        text = i < 2 or i == len(heads) - 1
        # Numbers never wrap; the label wraps between its overrides, status (a failed run's error can be long)
        # and run dir fold.
        table.add_column(heads[i], justify="left" if text else "right", overflow="fold", no_wrap=not text,
                         max_width=32 if i == 1 else None)
    for row in rows:
        values = cells(row, root)
        table.add_row(*(values[i] for i in keep))
    return table


def render(rows: list[dict], roles: Roles, console: Console) -> None:
    root = runs_root(rows)
    keep = list(range(len(headers(roles))))
    table = _console_table(rows, roles, root, keep)
    for column in NARROW_DROP:
        # Measured without the terminal's limit: the table's natural width.
        if console.measure(table, options=console.options.update_width(100_000)).maximum <= console.width:
            break
        keep.remove(column)
        table = _console_table(rows, roles, root, keep)
    console.print(table)

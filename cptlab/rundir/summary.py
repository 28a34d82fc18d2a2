"""summary.json (the run's record: status, final metrics, per-domain learning/forgetting) and the short
table printed at the end of every run (also written as report.md)."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cptlab.rundir.layout import REPORT, SUMMARY
from cptlab.utils.io import atomic_write_json, atomic_write_text

# summary.json's per-block record of the final evaluation: {domain: {"nll_bits": [...], "bytes": [...],
# "available": int}}, block i's summed negative log-likelihood in bits and its UTF-8 bytes, in block order (the
# blocks of domains.<D>.eval_blocks_sha256). sum(nll_bits) / sum(bytes) is domains.<D>.bpb_end (to the rounding
# below); cptlab-compare resamples the blocks (a bootstrap: the evaluation sample's own noise). "available": the
# blocks the held-out split could give (eval.max_blocks' ceiling), for cptlab-compare's eval.max_blocks advice.
EVAL_BLOCK_SUMS = "eval_block_sums"
NLL_BITS_DECIMALS = 4  # a block holds thousands of bits: 1e-4 of a bit keeps bpb exact to ~1e-8


def block_sums_record(rows, available: int | None = None) -> dict:
    """One domain's EVAL_BLOCK_SUMS entry from its per-block [nll (nats), n_tokens, n_bytes] rows
    (cptlab.evaluation.bpb.eval_sums(per_block=True), every rank's blocks in block order)."""
    rows = rows.tolist() if hasattr(rows, "tolist") else list(rows)
    return {"nll_bits": [round(nll / math.log(2), NLL_BITS_DECIMALS) for nll, _, _ in rows],
            "bytes": [int(round(n_bytes)) for _, _, n_bytes in rows], "available": available}


def read_summary(run_dir: Path) -> dict | None:
    path = Path(run_dir) / SUMMARY
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def write_summary(run_dir: Path, summary: dict) -> Path:
    path = Path(run_dir) / SUMMARY
    atomic_write_json(path, summary)
    return path


def domain_rows(first: dict, latest: dict, roles: dict[str, str], unigram: dict[str, float] | None = None
                ) -> dict[str, dict]:
    """Per domain: bpb at step 0 and at the end, their difference, and a unigram model's bpb on the
    same held-out blocks (the floor a language model must beat). After a vocabulary extension, for the
    domains held in base tokens: the unextended base's bpb on the same blocks and what the new rows'
    initialisation costs it at step 0 (cptlab.training.callbacks.PeriodicEval)."""
    rows = {}
    for name, role in roles.items():
        b0, b1 = first.get(f"val/{name}/bpb"), latest.get(f"val/{name}/bpb")
        rows[name] = {"role": role, "bpb_start": b0, "bpb_end": b1,
                      "delta_bpb": (b1 - b0) if b0 is not None and b1 is not None else None,
                      "unigram_bpb": (unigram or {}).get(name)}
        base = first.get(f"val/{name}/bpb_base_vocab")
        if base is not None and b0 is not None:
            rows[name] |= {"bpb_base_model": base, "init_cost_bpb": b0 - base}
    return rows


def _fmt(x, spec=".4f"):
    return "-" if x is None else format(x, spec)


def _lines(summary: dict) -> list[tuple[str, str]]:
    paths = summary.get("paths", {})
    out = [("status", summary["status"] + (f": {summary['error']}" if summary.get("error") else "")),
           ("tokens/s", _fmt(summary.get("throughput", {}).get("tokens_per_sec"), ",.0f")),
           ("wall time", f"{summary.get('wall_time_s', 0):.1f} s"), *_harness_line(summary),
           ("run dir", paths.get("run_dir", "-"))]
    out += [(k, paths[k]) for k in ("plot", "export") if paths.get(k)]
    return out


def render_table(summary: dict, console: Console | None = None) -> None:
    # Piped output (CI, logs) gets a fixed generous width rather than rich's 80-column fallback.
    console = console or Console(soft_wrap=True, width=None if sys.stdout.isatty() else 120)
    table = Table(title=f"cptlab · {escape(str(summary.get('name', '')))}", title_justify="left")
    domains = summary.get("domains", {})
    base = any("bpb_base_model" in d for d in domains.values())
    columns = ["domain", "role", *(["base model bpb"] if base else []), "bpb @ step 0", "bpb @ end", "Δ bpb",
               "unigram bpb", "reads as"]
    for col in columns:
        table.add_column(col, justify="left" if col in ("domain", "role", "reads as") else "right")
    for name, d in domains.items():
        delta = d.get("delta_bpb")
        verdict = "-" if delta is None else ("learning" if delta < 0 else "forgetting" if d["role"] != "new" else "not learning")
        table.add_row(escape(name), d["role"], *([_base_cell(d)] if base else []), _fmt(d.get("bpb_start")),
                      _fmt(d.get("bpb_end")), _fmt(delta, "+.4f"), _fmt(d.get("unigram_bpb")), verdict)
    console.print(table)
    harness = harness_rows(summary)
    if harness:
        tasks = Table(title="downstream tasks (lm-evaluation-harness)", title_justify="left")
        for col in ("task / metric", "@ step 0", "@ end", "Δ", "± stderr"):
            tasks.add_column(col, justify="left" if col.startswith("task") else "right")
        for row in harness:
            tasks.add_row(*(escape(c) for c in row))
        console.print(tasks)
    for key, value in _lines(summary):
        console.print(f"  {key:<10} {value}", highlight=False, markup=False)


def harness_rows(summary: dict) -> list[list[str]]:
    """[task/metric, value at step 0, at the end, change, stderr at the end] of summary.json "harness"."""
    metrics = (summary.get("harness") or {}).get("metrics") or {}
    return [[name, _fmt(m.get("start")), _fmt(m.get("end")), _fmt(m.get("delta"), "+.4f"), _fmt(m.get("end_stderr"))]
            for name, m in metrics.items()]


def _harness_line(summary: dict) -> list[tuple[str, str]]:
    h = summary.get("harness") or {}
    if not h.get("evaluations"):
        return []
    return [("harness", f"{h['evaluations']} evaluations, {h['seconds_per_evaluation']:.1f} s each "
                        f"(+{h.get('setup_seconds') or 0:.1f} s loading the tasks)")]


def _base_cell(row: dict) -> str:
    """The unextended base's bpb on the same blocks, and what the new rows cost it at step 0."""
    if "bpb_base_model" not in row:
        return "-"
    return f"{row['bpb_base_model']:.4f} ({row['init_cost_bpb']:+.4f} init)"


def write_report(run_dir: Path, summary: dict) -> Path:
    domains = summary.get("domains", {})
    base = any("bpb_base_model" in d for d in domains.values())
    lines = [f"# cptlab run: {summary.get('name', '')}", "",
             "| domain | role |" + (" base model bpb |" if base else "") + " bpb @ step 0 | bpb @ end | Δ bpb | unigram bpb |",
             "|---|---|" + ("---:|" if base else "") + "---:|---:|---:|---:|"]
    for name, d in domains.items():
        lines.append(f"| {name} | {d['role']} |" + (f" {_base_cell(d)} |" if base else "") +
                     f" {_fmt(d.get('bpb_start'))} | {_fmt(d.get('bpb_end'))} "
                     f"| {_fmt(d.get('delta_bpb'), '+.4f')} | {_fmt(d.get('unigram_bpb'))} |")
    lines.append("")
    harness = harness_rows(summary)
    if harness:
        lines += ["| task / metric | @ step 0 | @ end | Δ | ± stderr |", "|---|---:|---:|---:|---:|"]
        lines += ["| " + " | ".join(row) + " |" for row in harness] + [""]
    lines += [f"- {k}: {v}" for k, v in _lines(summary)]
    if summary.get("paths", {}).get("plot"):
        lines += ["", f"![forgetting curve]({os.path.basename(summary['paths']['plot'])})"]
    path = Path(run_dir) / REPORT
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path

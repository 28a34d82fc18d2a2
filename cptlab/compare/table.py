"""One row per configuration (learning, forgetting, its area under the curve, throughput: the mean over
the runs that differ only in seed, with its 95% t-interval and n) and the comparison table written as
summary.md / summary.csv and printed with rich. Each row is also compared with a reference row."""

from __future__ import annotations

import math
import os
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cptlab.compare.blocks import (
    N_BOOT,
    SEED_SHARE,
    Resampler,
    difference,
    half_width,
    max_blocks_advice,
    row_replicates,
)
from cptlab.compare.runs import Group, Roles, Run, group_runs
from cptlab.compare.stats import DEFAULT_MARGIN, compare_samples, comparison_text, holm, mean_ci
from cptlab.errors import CptlabError
from cptlab.utils.io import atomic_write_csv, atomic_write_text

# The figures of a row: each the mean over the row's runs, with `<figure>_ci` (95% t half-width, None for n=1).
FIGURES = ["new_bpb", "learning", "old_bpb", "forgetting", "forgetting_auc", "tokens_per_sec", "steps",
           "tokens_seen", "setup_s", "wall_time_s"]
COMPARED = ["learning", "forgetting"]  # compared with the reference row (paired or Welch, Holm-adjusted)
# The end bpb figures whose evaluation-sample noise (a bootstrap over eval blocks, cptlab.compare.blocks) is
# reported beside the seed interval as `<figure>_eval_ci95`; each compared figure's is `<figure>_vs_ref_eval_ci95`.
EVAL_FIGURES = {"new_bpb": "new", "old_bpb": "old"}  # figure -> the roles' domains it averages
EVAL_COMPARED = {"learning": "new", "forgetting": "old"}  # both are the end bpb's change: its eval noise
CSV_FIELDS = ["label", "status", "error", "n", "seeds",
              *(f for k in FIGURES[:5] for f in (k, f"{k}_ci95", *([f"{k}_eval_ci95"] if k in EVAL_FIGURES else []))),
              *(f for k in COMPARED for f in (f"{k}_vs_ref", f"{k}_vs_ref_ci95", f"{k}_vs_ref_eval_ci95",
                                              f"{k}_vs_ref_eval_method", f"{k}_vs_ref_verdict",
                                              f"{k}_vs_ref_method", f"{k}_vs_ref_p", f"{k}_vs_ref_p_holm")),
              "pareto_front", *(f for k in FIGURES[5:] for f in (k, f"{k}_ci95")), "run_dir"]


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


# bpb: rows whose step-0 values on a domain differ by more than this started from different models.
START_TOLERANCE = 1e-3


def _reference_group(completed: list[Group], reference: str | None) -> Group | None:
    """The row the others are measured from: the one labelled `reference`, else the first completed row."""
    return next((g for g in completed if g.label == reference), completed[0] if completed else None)


def _start_means(completed: list[Group], domain: str) -> dict[str, float | None]:
    """Row label -> the mean step-0 bpb of its runs on `domain`."""
    return {g.label: _mean(run.domain_bpb(domain)["bpb_start"] for run in g.runs) for g in completed}


def common_starts(groups: list[Group], roles: Roles, reference: str | None = None) -> dict[str, float]:
    """Domain -> the step-0 bpb that every row's learning and forgetting are measured from, for each domain on
    which the completed rows' mean step-0 bpb differ (another tokenizer, another init of the new rows, another
    base; the seeds of one row may differ, as a random-init model's do): the reference row's mean step-0 bpb.
    Measured from a common point, rows compare on their bpb at the end. Measured from its own step 0, a run that
    starts worse would show less forgetting for the same end point. Empty when every row starts alike; then each
    run is measured from its own step 0."""
    completed = [g for g in groups if g.status == "completed"]
    ref = _reference_group(completed, reference)
    starts = {}
    for domain in roles.new + roles.old:
        means = _start_means(completed, domain)
        known = [v for v in means.values() if v is not None]
        if ref is not None and means[ref.label] is not None and max(known) - min(known) > START_TOLERANCE:
            starts[domain] = means[ref.label]
    return starts


def start_warnings(groups: list[Group], starts: dict[str, float], reference: str | None) -> list[str]:
    """The line the table prints for each domain common_starts re-anchored."""
    completed = [g for g in groups if g.status == "completed"]
    ref = _reference_group(completed, reference)
    out = []
    for domain, start in starts.items():
        per_row = ", ".join(f"{label}: {mean:.4f}" for label, mean in _start_means(completed, domain).items()
                            if mean is not None)
        out.append(f"{domain}: the rows start from different bpb at step 0 ({per_row}); learning and forgetting "
                   f"are measured from the reference row's ({ref.label}: {start:.4f}), i.e. they compare bpb at "
                   f"the end")
    return out


def run_figures(run: Run, roles: Roles, starts: dict[str, float] | None = None) -> dict:
    """One run's figures; those it does not have (yet) are None. `starts`: domain -> the step-0 bpb to measure
    learning / forgetting from instead of the run's own (common_starts)."""
    starts = starts or {}
    new = [dict(run.domain_bpb(d), start=starts.get(d)) for d in roles.new]
    old = [dict(run.domain_bpb(d), start=starts.get(d)) for d in roles.old]
    # Measured from the run's own step 0 (what cptlab-merge's points are measured from, too).
    own = {"learning_own": _mean(d["bpb_start"] - d["bpb_end"] for d in new
                                 if d["bpb_start"] is not None and d["bpb_end"] is not None),
           "forgetting_own": _mean(d["delta_bpb"] for d in old)}
    for d in new + old:
        if d["start"] is None:
            d["start"] = d["bpb_start"]
        elif d["bpb_end"] is not None:
            d["delta_bpb"] = d["bpb_end"] - d["start"]
    s = run.summary
    token_rates = [v for _, v in run.series.get("train/tokens_per_sec", [])]
    steps = [step for points in run.series.values() for step, _ in points]
    return {
        "new_bpb": _mean(d["bpb_end"] for d in new),
        "learning": _mean(d["start"] - d["bpb_end"] for d in new
                          if d["start"] is not None and d["bpb_end"] is not None),
        "old_bpb": _mean(d["bpb_end"] for d in old),
        "forgetting": _mean(d["delta_bpb"] for d in old),
        "forgetting_auc": _mean(forgetting_auc(run, d) for d in roles.old),
        # The summary's figures for a finished run; for the others what metrics.csv has so far.
        "tokens_per_sec": (s.get("throughput") or {}).get("tokens_per_sec") or _mean(token_rates),
        "steps": _int(s.get("steps", max(steps) if steps else None)),
        "tokens_seen": s.get("tokens_seen", run.latest("trainer/tokens_seen")),
        # Tokenizer + data + model set-up before the first step (None for runs written before it was kept).
        "setup_s": sum((s.get("setup") or {}).values()) if s.get("setup") else None,
        "wall_time_s": s.get("wall_time_s"),
        **own,
    }


def _pooled(values: list) -> tuple:
    """(mean, 95% half-width) of a figure over a row's runs: None when no run has it, NaN when one diverged."""
    known = [v for v in values if v is not None]
    if any(isinstance(v, float) and not math.isfinite(v) for v in known):
        return math.nan, None
    est = mean_ci(known)
    mean = est.mean
    if mean is not None and all(isinstance(v, int) for v in known) and float(mean).is_integer():
        mean = int(mean)  # steps, tokens seen: integers stay integers
    return mean, est.ci


def build_rows(runs: list[Run] | list[Group], roles: Roles, reference: str | None = None,
               margin: float = DEFAULT_MARGIN) -> list[dict]:
    """Rows in the runs' order, one per group of runs that differ only in seed (cptlab.compare.runs.group_runs);
    figures a row does not have (yet) are None. `reference`: the label of the row the others are compared
    with (default: the first completed row); `margin`: the equivalence margin of those comparisons."""
    groups = runs if all(isinstance(g, Group) for g in runs) else group_runs(runs)
    starts = common_starts(groups, roles, reference)
    rows = []
    for group in groups:
        per_run = [{**run_figures(run, roles, starts), "seed": seed} for run, seed in zip(group.runs, group.seeds)]
        first = group.runs[0]
        row = {"label": group.label, "status": group.status, "error": first.error, "n": len(group.runs),
               "seeds": ",".join("-" if s is None else str(s) for s in group.seeds),
               "runs": per_run, "run_dirs": [str(run.path) for run in group.runs],
               "run_dir": "; ".join(str(run.path) for run in group.runs),
               "pareto_front": None,  # True/False once set below; None = not a completed row with both numbers
               "starts": starts}
        for key in FIGURES:
            row[key], row[f"{key}_ci"] = _pooled([p[key] for p in per_run])
        rows.append(row)
    # Only completed rows compete; a diverged run's NaN would otherwise sit on the front (it compares false).
    scored = [i for i, r in enumerate(rows) if r["status"] == "completed"
              and all(r[k] is not None and math.isfinite(r[k]) for k in ("forgetting", "learning"))]
    front = set(pareto_front([(rows[i]["forgetting"], rows[i]["learning"]) for i in scored]))
    for k, i in enumerate(scored):
        rows[i]["pareto_front"] = k in front
    compare_with_reference(rows, reference, margin)
    eval_noise(groups, rows, roles, margin)
    return rows


def eval_noise(groups: list[Group], rows: list[dict], roles: Roles, margin: float = DEFAULT_MARGIN) -> None:
    """Set, beside the seed intervals, the evaluation sample's noise (cptlab.compare.blocks: a bootstrap over the
    final evaluation's blocks, the row's seed mean recomputed per resample): `<figure>_eval_ci` of EVAL_FIGURES,
    `<figure>_vs_ref_eval_ci` and `_eval_method` (paired / unpaired blocks) of EVAL_COMPARED, and on every row
    `eval_advice`, the eval.max_blocks advice lines. None where a row (or the reference) has no block data."""
    resampler = Resampler()
    domains = {"new": roles.new, "old": roles.old}
    runs = [group.runs if row["status"] == "completed" else [] for group, row in zip(groups, rows)]
    ref = next((i for i, row in enumerate(rows) if row.get("learning_vs_ref_text") == "reference"), None)
    advice = max_blocks_advice(runs, ref, margin, roles.new + roles.old)
    for i, row in enumerate(rows):
        row["eval_advice"] = advice
        for key, role in EVAL_FIGURES.items():
            row[f"{key}_eval_ci"] = half_width(row_replicates(resampler, runs[i], domains[role])) if runs[i] else None
        for key, role in EVAL_COMPARED.items():
            row[f"{key}_vs_ref_eval_ci"] = row[f"{key}_vs_ref_eval_method"] = None
            if row.get(f"{key}_vs_ref") is not None and ref is not None and runs[i] and runs[ref]:
                row[f"{key}_vs_ref_eval_ci"], row[f"{key}_vs_ref_eval_method"] = difference(
                    resampler, runs[i], runs[ref], domains[role])


def compare_with_reference(rows: list[dict], reference: str | None = None, margin: float = DEFAULT_MARGIN) -> None:
    """Set `<figure>_vs_ref` (a cptlab.compare.stats.Comparison: paired when the two rows ran the same seeds,
    Welch otherwise) and `<figure>_vs_ref_text` on every completed row but the reference. The table's
    comparisons (every row, learning and forgetting) are one family for the Holm-Bonferroni correction; each
    reads "difference", "equivalent" (within +/- `margin`) or "inconclusive" (see cptlab.compare.stats.holm).
    Rows with the same figures seed for seed share one comparison, counted once."""
    completed = [r for r in rows if r["status"] == "completed"]
    if reference is not None:
        ref = next((r for r in rows if r["label"] == reference), None)
        if ref is None:
            raise CptlabError(f"--reference {reference!r} is not a row label (rows: "
                              f"{', '.join(r['label'] for r in rows)})")
    else:
        ref = completed[0] if completed else None
    compared, tests = [], {}
    for row in rows:
        row["reference"] = ref["label"] if ref else None
        for key in COMPARED:
            row[f"{key}_vs_ref"] = row[f"{key}_vs_ref_text"] = None
            if ref is None or row is ref or row["status"] != "completed":
                continue
            sample = _by_seed(row, key)
            # A row with an earlier row's figures seed for seed (the raw weights of an EMA run and the run
            # without EMA) is the same test: it shares that comparison, counted once in the family.
            twin = (key, tuple(sorted((str(seed), value) for seed, value in sample.items())))
            if twin not in tests:
                tests[twin] = compare_samples(sample, _by_seed(ref, key))
            row[f"{key}_vs_ref"] = tests[twin]
            compared.append((row, key))
    holm(list(tests.values()), margin=margin)
    for row, key in compared:
        row[f"{key}_vs_ref_text"] = comparison_text(row[f"{key}_vs_ref"])
    if ref is not None:
        ref["learning_vs_ref_text"] = ref["forgetting_vs_ref_text"] = "reference"
        ref["margin"] = margin


def _by_seed(row: dict, key: str) -> dict:
    """{seed: figure} of a row's runs (runs without a recorded seed keyed by position: never paired)."""
    return {(p["seed"] if p.get("seed") is not None else ("run", i)): p[key] for i, p in enumerate(row["runs"])}


def headers(roles: Roles) -> list[str]:
    """Column titles; the line breaks keep the printed table narrow (markdown joins them with a space)."""
    new, old = ", ".join(roles.new) or "-", ", ".join(roles.old) or "-"
    return ["run", "status", "n", f"new bpb\n({new})", "± eval\n(new bpb)", "learning\n↑", f"old bpb\n({old})",
            "± eval\n(old bpb)", "forgetting\n↓", "forgetting\nAUC ↓", "learning\nvs ref", "± eval\n(learning\nvs ref)",
            "forgetting\nvs ref", "± eval\n(forgetting\nvs ref)", "Pareto", "tokens/s", "steps", "set-up\n(s)",
            "wall\ntime (s)", "run dir"]


def _eval_cell(row: dict, key: str) -> str:
    """"± 0.0040" (the evaluation sample's 95% half-width, cptlab.compare.blocks), "± 0.0050 unpaired" for a
    difference between rows scored on different blocks; empty for a row without block data."""
    value = row.get(f"{key}_eval_ci")
    if value is None:
        return ""
    unpaired = row.get(f"{key}_eval_method") == "unpaired blocks"
    return f"± {value:.4f}" + (" unpaired" if unpaired else "")


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def runs_root(rows: list[dict]) -> Path:
    """The directory all run dirs are under: the table names run dirs relative to it, to stay narrow."""
    paths = [Path(d).resolve() for r in rows for d in r["run_dirs"]]
    if not paths:
        return Path.cwd()
    root = Path(os.path.commonpath(paths))
    return root.parent if root in paths else root


def _fmt_ci(row: dict, key: str, spec: str) -> str:
    """"2.1000 ± 0.0123" (mean ± 95% half-width) for a row of several runs, the value alone for one."""
    value, ci = row[key], row.get(f"{key}_ci")
    if value is None:
        return "-"
    return format(value, spec) if ci is None else f"{format(value, spec)} ± {format(ci, spec.lstrip('+'))}"


def cells(row: dict, root: Path) -> list[str]:
    status = f"failed: {row['error']}" if row["status"] == "failed" and row["error"] else row["status"]
    dirs = [os.path.relpath(Path(d).resolve(), root) for d in row["run_dirs"]]
    return [row["label"], status, str(row["n"]), _fmt_ci(row, "new_bpb", ".4f"), _eval_cell(row, "new_bpb"),
            _fmt_ci(row, "learning", "+.4f"), _fmt_ci(row, "old_bpb", ".4f"), _eval_cell(row, "old_bpb"),
            _fmt_ci(row, "forgetting", "+.4f"), _fmt_ci(row, "forgetting_auc", "+.4f"),
            row.get("learning_vs_ref_text") or "-", _eval_cell(row, "learning_vs_ref"),
            row.get("forgetting_vs_ref_text") or "-", _eval_cell(row, "forgetting_vs_ref"),
            {True: "★", False: ""}.get(row["pareto_front"], "-"), _fmt_ci(row, "tokens_per_sec", ",.0f"),
            _fmt(row["steps"], "d" if isinstance(row["steps"], int) else ".1f"), _fmt_ci(row, "setup_s", ".1f"),
            _fmt_ci(row, "wall_time_s", ".1f"), dirs[0] + (f" (+{len(dirs) - 1} seeds)" if len(dirs) > 1 else "")]


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: list[dict], roles: Roles) -> str:
    head = [h.replace("\n", " ") for h in headers(roles)]
    lines = ["| " + " | ".join(head) + " |",
             "|" + "|".join("---" if i < 2 or i == len(head) - 1 else "---:" for i in range(len(head))) + "|"]
    root = runs_root(rows)
    lines += ["| " + " | ".join(_md_escape(c) for c in cells(row, root)) + " |" for row in rows]
    return "\n".join(lines)


def markdown(rows: list[dict], roles: Roles, warnings: list[str] = (), budget: list[str] = ()) -> str:
    counts = {s: sum(r["status"] == s for r in rows) for s in ("completed", "failed", "unfinished")}
    ref = next((r["reference"] for r in rows if r.get("reference")), None)
    extra = []
    if warnings:
        extra += ["## Warnings", "", *(f"- ⚠ {w}" for w in warnings), ""]
    if budget:
        extra += ["## Replay-ratio budget", "", *(f"- {b}" for b in budget), ""]
    advice = next((r["eval_advice"] for r in rows if r.get("eval_advice")), [])
    if advice:
        extra += ["## Evaluation noise (eval.max_blocks)", "", *(f"- {a}" for a in advice), ""]
    return "\n".join([
        "# cptlab-compare", "",
        f"New domain(s): {', '.join(roles.new) or '-'} · old domain(s): {', '.join(roles.old) or '-'} · "
        f"{len(rows)} rows of {sum(r['n'] for r in rows)} runs "
        f"({', '.join(f'{n} {s}' for s, n in counts.items() if n)}), in sweep order "
        f"(sorted by the differing overrides' values); run dirs are under {runs_root(rows)}.", "",
        markdown_table(rows, roles), "", *extra,
        "- a row pools the completed runs that differ only in `seed`: each figure is their mean ± the half-width "
        "of its 95% t-interval (t quantile with n-1 degrees of freedom × standard error); n = runs pooled. "
        "A failed or unfinished run is a row of its own.",
        f"- learning / forgetting vs ref: the row's mean minus the reference row's ({ref or '-'}), ± the "
        "half-width of its interval: paired (the mean of per-seed differences, t with n-1 degrees of freedom) "
        "when the two rows ran the same seeds, Welch otherwise; adjusted by Holm-Bonferroni over the "
        f"{_family_size(rows)} comparisons of this table (the i-th smallest p-value at 0.05 / (m - i + 1)); a "
        "row with the reference's own figures seed for seed (an EMA run's raw weights) is identical, not a test, "
        "and stays out of the family, and rows with the same figures seed for seed count once. Verdict: "
        "**difference** when the adjusted interval excludes 0, "
        f"**equivalent** when it lies inside ± {_margin(rows):g} bpb (the --margin), **inconclusive** otherwise or "
        "with a single run on either side. "
        "summary.csv has each comparison's method, p and Holm-adjusted p.",
        "- ± eval: the evaluation sample's own noise, which the seed intervals leave out: the half-width "
        f"(1.96 × sd) of a bootstrap over the final evaluation's blocks ({N_BOOT} resamples of the blocks with "
        "replacement, a fixed generator), each resample applied to every seed of the row and the seed mean "
        "recomputed. Beside a comparison it is the bootstrap of the difference of the two rows' end bpb, paired "
        "(the same resample for both rows) when they scored the same blocks, else marked unpaired; the step-0 "
        "bpb's own noise is left out. Empty for runs that did not record their blocks (summary.json "
        "`eval_block_sums`). The Evaluation noise section takes, per domain, the noisiest difference from the "
        "reference row (else the noisiest row's bpb) and says how many blocks (eval.max_blocks) would bring it "
        f"below {SEED_SHARE:g} of its seed interval and below the --margin: the noise shrinks as 1/√blocks.",
        "- learning: new-domain bpb at step 0 minus at the end (higher is better).",
        "- forgetting: old-domain Δbpb at the end, bpb minus its step-0 value (above 0 = forgotten).",
        "- when the rows start from different bpb on a domain (see Warnings), both are measured from the reference "
        "row's step-0 bpb instead, for every row; the forgetting AUC stays measured from each run's own step 0.",
        "- forgetting AUC: old-domain Δbpb averaged over training (trapezoid over tokens seen / tokens seen).",
        "- Pareto ★: no other completed run forgets less and learns more. Several domains are averaged.",
        "- failed and unfinished runs show the latest values their metrics.csv has.", "",
        "![forgetting curves](forgetting_curves.png)", "",
        "![learning vs forgetting](tradeoff.png)", ""])


def _family_size(rows: list[dict]) -> int:
    """The comparisons Holm ran over: each with a p-value, a comparison shared by twin rows once."""
    tested = (r.get(f"{k}_vs_ref") for r in rows for k in COMPARED)
    return len({id(c) for c in tested if c is not None and c.p is not None})


def _margin(rows: list[dict]) -> float:
    return next((r["margin"] for r in rows if r.get("margin") is not None), DEFAULT_MARGIN)


def write_markdown(path: Path, rows: list[dict], roles: Roles, warnings: list[str] = (),
                   budget: list[str] = ()) -> Path:
    atomic_write_text(path, markdown(rows, roles, warnings, budget))
    return Path(path)


def write_csv(path: Path, rows: list[dict]) -> Path:
    flats = []
    for row in rows:
        flat = dict(row)
        for key in FIGURES:
            flat[f"{key}_ci95"] = row.get(f"{key}_ci")
        for key in EVAL_FIGURES:
            flat[f"{key}_eval_ci95"] = row.get(f"{key}_eval_ci")
        for key in COMPARED:
            d = row.get(f"{key}_vs_ref")
            if d is None:
                flat[f"{key}_vs_ref_verdict"] = row.get(f"{key}_vs_ref_text")  # "reference" or nothing
                continue
            flat.update({f"{key}_vs_ref_eval_ci95": row.get(f"{key}_vs_ref_eval_ci")})
            flat.update({f"{key}_vs_ref": d.mean, f"{key}_vs_ref_ci95": d.ci, f"{key}_vs_ref_verdict": d.verdict,
                         f"{key}_vs_ref_method": d.method, f"{key}_vs_ref_p": d.p, f"{key}_vs_ref_p_holm": d.p_adj})
        flats.append(flat)
    atomic_write_csv(path, CSV_FIELDS, flats)
    return Path(path)


# Printed columns given up, in this order, when the terminal is too narrow for the whole table: run dir, the
# ± eval columns, wall time, set-up, steps, tokens/s, Pareto, forgetting AUC, old bpb, new bpb (summary.md
# always has them all).
NARROW_DROP = (19, 13, 11, 7, 4, 18, 17, 16, 15, 14, 9, 6, 3)
# ... and then, on a narrow terminal, the comparisons with the reference row (learning first) and n.
LAST_DROP = (10, 12, 2)


def _console_table(rows: list[dict], roles: Roles, root: Path, keep: list[int]) -> Table:
    caption = (f"run dirs under {escape(str(root))}; ± = 95% interval over seeds (n runs); ± eval = 95% bootstrap "
               "over the eval blocks" if 19 in keep else "some columns left out to fit the terminal; summary.md "
               "has them all")
    table = Table(title="cptlab-compare", title_justify="left", caption=caption, caption_justify="left")
    heads = headers(roles)
    for i in keep:
        text = i < 2 or i == len(heads) - 1
        # Numbers never wrap; the label wraps between its overrides, status (a failed run's error can be long)
        # and run dir fold.
        # A "mean ± interval" cell may break at its spaces when the terminal is too narrow even without the
        # optional columns.
        wraps = text or i in (3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 15, 17, 18)
        table.add_column(escape(heads[i]), justify="left" if text else "right", overflow="fold", no_wrap=not wraps,
                         max_width=32 if i == 1 else 26 if i in (10, 12) else None,
                         min_width=min(16, max([len(r["label"]) for r in rows] + [3])) if i == 0 else None)
    for row in rows:
        values = cells(row, root)
        # Labels, errors and paths hold the user's overrides (`sources=[/data/x.jsonl]`): text, not rich markup.
        table.add_row(*(escape(values[i]) for i in keep))
    return table


def render(rows: list[dict], roles: Roles, console: Console) -> None:
    root = runs_root(rows)
    keep = list(range(len(headers(roles))))
    table = _console_table(rows, roles, root, keep)
    for column in NARROW_DROP + LAST_DROP:
        # Measured without the terminal's limit: the table's natural width.
        if console.measure(table, options=console.options.update_width(100_000)).maximum <= console.width:
            break
        keep.remove(column)
        table = _console_table(rows, roles, root, keep)
    console.print(table)
    advice = next((r["eval_advice"] for r in rows if r.get("eval_advice")), [])
    if advice:
        console.print("evaluation noise (bootstrap over the eval blocks; eval.max_blocks):", highlight=False)
        for line in advice:
            console.print(f"  {line}", highlight=False, soft_wrap=True, markup=False)

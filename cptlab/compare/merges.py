"""The WiSE-FT merge curve in the comparison: for every row whose runs cptlab-merge scored (merge.json,
cptlab.run.merge), one line per interpolation weight alpha with its learning and forgetting pooled over the
row's seeds (mean ± 95% interval, measured from each run's own step 0 like the table's), and each alpha's
paired difference from alpha = 1 (the trained weights themselves: same run, same seed), Holm-adjusted over the
row's comparisons, read difference / equivalent / inconclusive. Written as merge.csv and a section of summary.md.

A merge point then carries an interval: "alpha = 0.75 forgets X less than the run it came from, at a cost of Y
in learning" is a claim the table tests, not one read off means."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cptlab.compare.runs import Group, Roles
from cptlab.compare.stats import DEFAULT_MARGIN, compare_samples, comparison_text, holm, mean_ci
from cptlab.run.merge import read_merge, tradeoff
from cptlab.utils.io import atomic_write_csv

FIGURES = ("learning", "forgetting")
CSV_FIELDS = ["label", "alpha", "n", "seeds", "new_bpb", "new_bpb_ci95", "learning", "learning_ci95", "forgetting",
              "forgetting_ci95"] + [f"{f}_vs_end{s}" for f in FIGURES
                                    for s in ("", "_ci95", "_method", "_p", "_p_holm", "_verdict")] + ["run_dir"]


def point_figures(point: dict, start: dict[str, float], roles: Roles) -> dict[str, float | None]:
    """new_bpb, learning and forgetting of one merge point, on the comparison's domains (`roles`), from the
    run's step-0 bpb `start` (cptlab.run.merge.tradeoff, as cptlab-merge defines them)."""
    bpb = point.get("bpb") or {}
    chosen = {d: bpb[d] for d in roles.new + roles.old if d in bpb}
    forgetting, learning = tradeoff(chosen, start, {**{d: "old" for d in roles.old}, **{d: "new" for d in roles.new}})
    new = [bpb[d] for d in roles.new if d in bpb]
    return {"new_bpb": sum(new) / len(new) if new else None, "learning": learning, "forgetting": forgetting}


def _scored(group: Group) -> dict[float, dict]:
    """alpha -> {seed: figures} over the group's raw-weights runs, alphas every run scored only."""
    by_alpha: dict[float, dict] = {}
    runs = [run for run in group.runs if run.view == "raw"]
    records = [(run, read_merge(run.path, "raw")) for run in runs]
    if not runs or any(not record or not record.get("points") for _, record in records):
        return {}
    for i, (run, record) in enumerate(records):
        seed = run.seed if run.seed is not None else ("run", i)
        for point in record["points"]:
            by_alpha.setdefault(float(point["alpha"]), {})[seed] = (run, point, record.get("step0_bpb") or {})
    return {alpha: seeds for alpha, seeds in sorted(by_alpha.items()) if len(seeds) == len(runs)}


def merge_rows(groups: list[Group], roles: Roles, margin: float = DEFAULT_MARGIN) -> list[dict]:
    """One row per (configuration, alpha) for every completed group whose runs all have merge.json."""
    rows = []
    for group in groups:
        if group.status != "completed":
            continue
        scored = _scored(group)
        if not scored:
            continue
        per_alpha = {alpha: {seed: point_figures(point, start, roles) for seed, (_, point, start) in seeds.items()}
                     for alpha, seeds in scored.items()}
        end = per_alpha.get(1.0)
        family = []
        for alpha, figures in per_alpha.items():
            seeds = sorted(figures, key=str)
            row = {"label": group.label, "alpha": alpha, "n": len(seeds),
                   "seeds": ",".join(str(s) for s in seeds),
                   "run_dir": "; ".join(str(run.path) for run, _, _ in scored[alpha].values())}
            for key in ("new_bpb",) + FIGURES:
                est = mean_ci([figures[s][key] for s in seeds])
                row[key], row[f"{key}_ci"] = est.mean, est.ci
            for key in FIGURES:
                row[f"{key}_vs_end"] = None
                if end is not None and alpha != 1.0:
                    row[f"{key}_vs_end"] = compare_samples({s: figures[s][key] for s in seeds},
                                                           {s: end[s][key] for s in seeds})
                    family.append(row[f"{key}_vs_end"])
            rows.append(row)
        holm(family, margin=margin)  # one family per configuration: every alpha, both figures
    return rows


def _flat(row: dict) -> dict:
    flat = {k: row.get(k) for k in ("label", "alpha", "n", "seeds", "new_bpb", "learning", "forgetting", "run_dir")}
    for key in ("new_bpb",) + FIGURES:
        flat[f"{key}_ci95"] = row.get(f"{key}_ci")
    for key in FIGURES:
        c = row.get(f"{key}_vs_end")
        if c is not None:
            flat.update({f"{key}_vs_end": c.mean, f"{key}_vs_end_ci95": c.ci, f"{key}_vs_end_method": c.method,
                         f"{key}_vs_end_p": c.p, f"{key}_vs_end_p_holm": c.p_adj,
                         f"{key}_vs_end_verdict": c.verdict})
    return flat


def write_csv(path: Path, rows: list[dict]) -> Path:
    atomic_write_csv(path, CSV_FIELDS, [_flat(row) for row in rows])
    return Path(path)


def _cell(row: dict, key: str, spec: str) -> str:
    value, ci = row.get(key), row.get(f"{key}_ci")
    if value is None:
        return "-"
    return format(value, spec) if ci is None else f"{format(value, spec)} ± {ci:.4f}"


HEADERS = ["run", "α", "n", "new bpb", "learning", "forgetting", "learning vs α=1", "forgetting vs α=1"]


def _cells(row: dict) -> list[str]:
    vs = ["reference" if row["alpha"] == 1.0 else comparison_text(row.get(f"{k}_vs_end")) for k in FIGURES]
    return [row["label"], f"{row['alpha']:g}", str(row["n"]), _cell(row, "new_bpb", ".4f"),
            _cell(row, "learning", "+.4f"), _cell(row, "forgetting", "+.4f"), *vs]


def markdown(rows: list[dict], margin: float = DEFAULT_MARGIN) -> str:
    lines = ["## Merge curves (cptlab-merge: θ(α) = (1 − α)·start + α·trained)", "",
             "| " + " | ".join(HEADERS) + " |", "|---|" + "---:|" * (len(HEADERS) - 1)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in _cells(row)) + " |" for row in rows]
    lines += ["", "- learning and forgetting from each run's own step 0, mean over the row's seeds ± the half-width "
                  "of its 95% t-interval; \"vs α=1\": the paired difference from the trained weights of the same "
                  f"runs, Holm-adjusted over the row's comparisons (equivalence margin ±{margin:g}).", ""]
    return "\n".join(lines)


def render(rows: list[dict], console: Console) -> None:
    table = Table(title="merge curves (cptlab-merge)", title_justify="left",
                  caption="± = 95% interval over seeds; vs α=1: paired, Holm-adjusted per row", caption_justify="left")
    for i, head in enumerate(HEADERS):
        table.add_column(escape(head), justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*(escape(c) for c in _cells(row)))
    console.print(table)

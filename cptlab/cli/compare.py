"""`cptlab-compare RUN_OR_SWEEP_DIR... [--out DIR] [--old en] [--new zh] [--reference LABEL] [--budget en=0.05]`:
compare the runs of a sweep, runs that differ only in seed pooled into one row (mean ± 95% interval);
writes forgetting_curves.png, tradeoff.png, summary.md and summary.csv (and, each a section of summary.md, for
runs with eval.harness tasks harness.csv and harness_curves.png, for runs cptlab-merge scored merge.csv),
prints the table, warns when the rows were not scored on the same held-out data, and with --budget prints the
smallest replay ratio that keeps forgetting within it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console

from cptlab.compare import harness, merges
from cptlab.compare.archive import archive_runs
from cptlab.compare.plots import plot_forgetting_curves, plot_tradeoff
from cptlab.compare.runs import eval_data_warnings, group_runs, is_run_dir, load_runs, parse_domains, resolve_roles
from cptlab.compare.stats import DEFAULT_MARGIN, budget_text, parse_budgets, replay_budgets
from cptlab.compare.table import build_rows, render, start_warnings, write_csv, write_markdown
from cptlab.errors import CptlabError
from cptlab.utils.io import atomic_write_text

OUTPUTS = ("forgetting_curves.png", "tradeoff.png", "summary.md", "summary.csv")


def default_out(paths: list[Path]) -> Path:
    """The sweep directory when exactly one is given (the comparison lives with the sweep), else ./compare."""
    if len(paths) == 1 and paths[0].is_dir() and not is_run_dir(paths[0]):
        return paths[0]
    return Path("compare")


def compare(paths: list[Path], out: Path | None = None, old: list[str] | None = None,
            new: list[str] | None = None, console: Console | None = None, reference: str | None = None,
            budgets: dict[str, float] | None = None, margin: float = DEFAULT_MARGIN, archive: bool = False,
            plots: bool = True) -> dict[str, Path]:
    """Load the runs under `paths`, write the four outputs into `out`, print the table (and the budget
    lines); returns {output name: path}. Raises CptlabError on a missing path or one with no run.
    `archive`: also keep each run's record and these options under out/runs (cptlab.compare.archive);
    `plots=False`: the tables only (recomputing a comparison to check its numbers)."""
    console = console or Console()
    paths = [Path(p) for p in paths]
    runs = load_runs(paths)
    roles = resolve_roles(runs, old=old, new=new)
    out = Path(out) if out is not None else default_out(paths)
    for run in runs:
        for warning in run.warnings:
            print(f"cptlab-compare: warning: {warning}", file=sys.stderr)
    groups = group_runs(runs)
    rows = build_rows(groups, roles, reference=reference, margin=margin)
    warnings = eval_data_warnings(groups, roles.new + roles.old)
    warnings += start_warnings(groups, rows[0]["starts"] if rows else {}, reference)
    for warning in warnings:
        print(f"cptlab-compare: warning: {warning}", file=sys.stderr)
    fits = replay_budgets(groups, roles, budgets) if budgets else []
    budget = [(f"[{family}] " if family else "") + budget_text(fit, ", ".join(roles.new) or "new")
              for family, fit in fits]
    written = {name: out / name for name in OUTPUTS if plots or not name.endswith(".png")}
    try:
        if plots:
            plot_forgetting_curves(groups, roles, written["forgetting_curves.png"])
            plot_tradeoff(rows, roles, written["tradeoff.png"])
        write_markdown(written["summary.md"], rows, roles, warnings, budget)
        write_csv(written["summary.csv"], rows)
        tasks = harness.harness_rows(groups)
        if tasks:  # eval.harness: downstream tasks, a section of summary.md and files of their own
            summary_md = written["summary.md"]
            atomic_write_text(summary_md, summary_md.read_text(encoding="utf-8") + "\n" + harness.markdown(tasks))
            written["harness.csv"] = harness.write_csv(out / "harness.csv", tasks)
            if plots:
                harness.plot_harness_curves(groups, out / "harness_curves.png")
                written["harness_curves.png"] = out / "harness_curves.png"
        merged = merges.merge_rows(groups, roles, margin=margin)
        if merged:  # cptlab-merge's curves with intervals and their differences from the trained end
            summary_md = written["summary.md"]
            text = summary_md.read_text(encoding="utf-8") + "\n" + merges.markdown(merged, margin)
            atomic_write_text(summary_md, text)
            written["merge.csv"] = merges.write_csv(out / "merge.csv", merged)
    except OSError as err:
        raise CptlabError(f"cannot write the comparison to {out}: {err.strerror or err}") from err
    if archive:
        written["runs"] = archive_runs([run.path for run in runs], out, {
            "old": old, "new": new, "reference": reference, "budgets": budgets, "margin": margin}, paths)
    render(rows, roles, console)
    if tasks:
        harness.render(tasks, console)
    if merged:
        merges.render(merged, console)
    if budget:
        console.print("replay-ratio budget (isotonic fit of forgetting vs data.replay_ratio):", highlight=False)
        for line in budget:
            console.print(f"  {line}", highlight=False, soft_wrap=True, markup=False)
    for name, path in written.items():
        console.print(f"  {name:<22} {path}", highlight=False, soft_wrap=True, markup=False)
    return written


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cptlab-compare",
        description="Compare cptlab runs (e.g. a replay-ratio x LoRA-rank sweep): forgetting curves, "
                    "learning vs forgetting with its Pareto front, and a summary table.")
    parser.add_argument("paths", nargs="+", type=Path, metavar="RUN_OR_SWEEP_DIR",
                        help="run directories, or sweep directories holding them (up to 2 levels down)")
    parser.add_argument("--out", type=Path, default=None, metavar="DIR",
                        help="where to write the outputs (default: the sweep directory when one is given, "
                             "else ./compare)")
    parser.add_argument("--old", action="append", metavar="DOMAINS",
                        help="old (base-language) domains, comma-separated (default: roles replay and eval in "
                             "the runs' .hydra/config.yaml)")
    parser.add_argument("--new", action="append", metavar="DOMAINS",
                        help="new domains, comma-separated (default: role new in the runs' config)")
    parser.add_argument("--reference", metavar="LABEL",
                        help="the row the others are compared with (default: the first completed row)")
    parser.add_argument("--budget", action="append", metavar="DOMAIN=MAX",
                        help="largest acceptable forgetting (Δbpb at the end) of an old domain, e.g. en=0.05: "
                             "prints the smallest data.replay_ratio expected to keep within it (repeatable)")
    parser.add_argument("--margin", type=_margin, default=DEFAULT_MARGIN, metavar="BPB",
                        help="equivalence margin: a difference from the reference row reads 'equivalent' only "
                             f"when its Holm-adjusted interval lies inside +/- this (default {DEFAULT_MARGIN:g} "
                             "bits per byte)")
    parser.add_argument("--archive", action="store_true",
                        help="also copy each run's summary.json, metrics.csv and .hydra config (no checkpoints) "
                             "and these options into OUT/runs, so the comparison recomputes from OUT alone")
    return parser


def _margin(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of bits per byte")
    return value


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    console = Console()
    if not console.is_terminal:
        console.width = 1000  # piped or logged: the table at its natural width, not folded into 80 columns
    try:
        compare(args.paths, out=args.out, old=parse_domains(args.old), new=parse_domains(args.new),
                console=console, reference=args.reference, budgets=parse_budgets(args.budget),
                margin=args.margin, archive=args.archive)
    except CptlabError as err:
        parser.exit(2, f"cptlab-compare: error: {err}\n")


if __name__ == "__main__":
    main()

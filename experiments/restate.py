"""Re-state the studies' pairwise comparisons by the rules of issue #27, from what the repository holds.

Each study's `results/summary.csv` keeps, per row, the mean over seeds, the half-width of its 95% t-interval
(`<figure>_ci95`) and `n`; the per-seed values are not committed yet, so paired differences cannot be
recomputed. This script backs out each row's standard error from its interval (se = ci95 / t_{0.975, n-1}),
forms the Welch difference of every comparison a study README states (Welch-Satterthwaite degrees of freedom
from the two standard errors), applies `cptlab.compare.stats.holm` over all the comparisons of that study's
table (both figures, zh and en, together: one family per table), and prints one verdict per cell:

- "difference": the Holm-adjusted interval excludes 0;
- "equivalent": the adjusted interval lies inside +/- the margin (`--margin`, default
  `cptlab.compare.stats.DEFAULT_MARGIN` = 0.01 bpb, the same as cptlab-compare's);
- "inconclusive": otherwise.

    .venv/bin/python experiments/restate.py [--margin 0.01] [--study levers ...]

The SmolLM2 table has no summary.csv: its inputs are the means and intervals the README states (rounded to
the printed digits), marked as such in the output.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from dataclasses import dataclass
from pathlib import Path

from cptlab.compare.stats import CONFIDENCE, DEFAULT_MARGIN, Comparison, holm, t_cdf, t_quantile

HERE = Path(__file__).resolve().parent

# A row: (study whose results/summary.csv holds it, its label there). The replay, levers, lora_rank, schedules and
# vocab_init studies were re-run with their per-run records (results/**/runs/, recomputed by experiments.check):
# they are not restated here.
_NR = "data.replay_ratio=0"
RET = {
    "nothing": ("retention", _NR),
    "EMA 0.9": ("retention", f"{_NR}, retention=ema, retention.decay=0.9 · EMA weights"),
    "EMA 0.95": ("retention", f"{_NR}, retention=ema, retention.decay=0.95 · EMA weights"),
    "EMA 0.97": ("retention", f"{_NR}, retention=ema, retention.decay=0.97 · EMA weights"),
    "EMA 0.99": ("retention", f"{_NR}, retention=ema, retention.on=all · EMA weights"),  # decay 0.99: the default
    "EMA 0.999": ("retention", f"{_NR}, retention=ema, retention.decay=0.999 · EMA weights"),
    "teacher 0.3": ("retention", f"{_NR}, retention=mean_teacher, retention.on=all, retention.weight=0.3"),
    "teacher 1": ("retention", f"{_NR}, retention=mean_teacher, retention.on=all"),
    "teacher 3": ("retention", f"{_NR}, retention=mean_teacher, retention.on=all, retention.weight=3"),
    "5% replay": ("retention", "data.replay_ratio=0.05"),
}
ZH_FORGET = (("zh bpb", "new_bpb"), ("forgetting", "forgetting"))

# Every table of pairwise comparisons the study READMEs state (their "Differences" tables, plus the comparisons
# their prose states), as (name, row a, row b): a minus b.
TABLES: dict[str, dict] = {
    "retention": {"metrics": ZH_FORGET, "comparisons": [
        ("EMA 0.9 − nothing", RET["EMA 0.9"], RET["nothing"]),
        ("EMA 0.95 − nothing", RET["EMA 0.95"], RET["nothing"]),
        ("EMA 0.97 − nothing", RET["EMA 0.97"], RET["nothing"]),
        ("EMA 0.99 − nothing", RET["EMA 0.99"], RET["nothing"]),
        ("EMA 0.99 − 5% replay", RET["EMA 0.99"], RET["5% replay"]),
        ("mean teacher (weight 1) − 5% replay", RET["teacher 1"], RET["5% replay"]),
        ("mean teacher (weight 1) − EMA 0.99", RET["teacher 1"], RET["EMA 0.99"]),
        ("mean teacher (weight 0.3) − nothing", RET["teacher 0.3"], RET["nothing"]),
        ("mean teacher (weight 0.3) − EMA 0.97", RET["teacher 0.3"], RET["EMA 0.97"]),
        ("mean teacher (weight 0.3) − EMA 0.95", RET["teacher 0.3"], RET["EMA 0.95"]),
        ("mean teacher (weight 0.3) − 5% replay", RET["teacher 0.3"], RET["5% replay"]),
        ("mean teacher (weight 3) − 5% replay", RET["teacher 3"], RET["5% replay"]),
        ("mean teacher (weight 3) − EMA 0.99", RET["teacher 3"], RET["EMA 0.99"]),
    ]},
}

# SmolLM2-135M, LoRA r=16 vs full fine-tuning, 3 seeds per arm: no summary.csv in the repo; the means and 95%
# half-widths as docs/results.md (formerly the README) states them, rounded to the printed digits.
SMOLLM2 = {
    "full": {"zh bpb @ 60": (2.650, 0.048, 3), "en Δ at the end": (-0.005, 0.133, 3)},
    "LoRA r=16": {"zh bpb @ 60": (2.674, 0.025, 3), "en Δ at the end": (-0.143, 0.009, 3)},
}


@dataclass(frozen=True)
class Row:
    mean: float
    ci95: float
    n: int

    @property
    def se(self) -> float:
        """The standard error behind a 95% t half-width: ci95 = t_{0.975, n-1} * s / sqrt(n)."""
        return self.ci95 / t_quantile(0.5 + CONFIDENCE / 2, self.n - 1)


def load(study: str) -> dict[str, dict[str, str]]:
    path = HERE / study / "results" / "summary.csv"
    with path.open(encoding="utf-8", newline="") as f:
        return {r["label"]: r for r in csv.DictReader(f)}


def row(tables: dict, where: tuple[str, str], column: str) -> Row:
    study, label = where
    if study not in tables:
        tables[study] = load(study)
    try:
        r = tables[study][label]
    except KeyError:
        raise SystemExit(f"experiments/{study}/results/summary.csv: no row labelled {label!r}") from None
    return Row(float(r[column]), float(r[f"{column}_ci95"]), int(r["n"]))


def welch(a: Row, b: Row) -> Comparison:
    """a minus b, Welch: se^2 = se_a^2 + se_b^2, Welch-Satterthwaite df, two-sided p (unadjusted)."""
    va, vb = a.se ** 2, b.se ** 2
    se2 = va + vb
    df = se2 ** 2 / (va ** 2 / (a.n - 1) + vb ** 2 / (b.n - 1))
    c = Comparison(a.mean - b.mean, math.sqrt(se2), df, min(a.n, b.n), "Welch")
    c.p = 2.0 * (1.0 - t_cdf(abs(c.mean) / c.se, df))
    return c


def unadjusted(c: Comparison) -> float:
    return t_quantile(0.5 + CONFIDENCE / 2, c.df) * c.se


def restate(name: str, spec: dict, margin: float, cache: dict) -> list[tuple[str, str, Comparison]]:
    cells = []
    for label, a, b in spec["comparisons"]:
        for figure, column in spec["metrics"]:
            cells.append((label, figure, welch(row(cache, a, column), row(cache, b, column))))
    holm([c for _, _, c in cells], margin=margin)
    return cells


def smollm2(margin: float) -> list[tuple[str, str, Comparison]]:
    cells = []
    for figure in SMOLLM2["full"]:
        a, b = (Row(*SMOLLM2[arm][figure]) for arm in ("full", "LoRA r=16"))
        cells.append(("full − LoRA r=16", figure, welch(a, b)))
    holm([c for _, _, c in cells], margin=margin)
    return cells


def digits(x: float) -> str:
    return f"{x:+.2e}" if x != 0 and abs(x) < 1e-3 else f"{x:+.3f}"


def cell(c: Comparison) -> str:
    """A study README's cell: "+0.090 ± 0.054 difference" (Holm-adjusted half-width; a minus sign for negatives)."""
    sign = "−" if f"{c.mean:.3f}".startswith("-") else "+"
    return f"{sign}{abs(c.mean):.3f} ± {c.ci:.3f} {c.verdict}"


def readme_rows(cells) -> dict[str, list[str]]:
    """{comparison: [cell per figure]} in the order of the table's figures, as the study READMEs print them."""
    rows: dict[str, list[str]] = {}
    for label, _, c in cells:
        rows.setdefault(label, []).append(cell(c))
    return rows


def show(name: str, cells, margin: float, out=sys.stdout) -> None:
    m = len(cells)
    print(f"\n## {name} ({m} comparisons, Holm over all of them; margin ±{margin:g})\n", file=out)
    print("| comparison | figure | difference ± 95% Welch | df | p | Holm p | Holm-adjusted interval | verdict |",
          file=out)
    print("|---|---|---:|---:|---:|---:|---:|---|", file=out)
    for label, figure, c in cells:
        print(f"| {label} | {figure} | {digits(c.mean)} ± {unadjusted(c):.3f} | {c.df:.1f} | {c.p:.3g} | "
              f"{c.p_adj:.3g} | {digits(c.mean)} ± {c.ci:.3f} | {c.verdict} |", file=out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--margin", type=float, default=DEFAULT_MARGIN,
                        help=f"equivalence margin in bpb (default {DEFAULT_MARGIN}, cptlab-compare's)")
    parser.add_argument("--study", action="append", choices=[*TABLES, "smollm2"],
                        help="only these tables (repeatable; default: all)")
    parser.add_argument("--readme", action="store_true",
                        help="print each table's rows as the study READMEs show them (comparison | cells)")
    args = parser.parse_args(argv)
    if args.readme:
        cache: dict = {}
        for name, spec in TABLES.items():
            if args.study is None or name in args.study:
                print(f"\n{name}: | comparison | " + " | ".join(f for f, _ in spec["metrics"]) + " |")
                for label, cells in readme_rows(restate(name, spec, args.margin, cache)).items():
                    print(f"| {label} | " + " | ".join(cells) + " |")
        return 0
    cache: dict = {}
    print("Welch differences backed out of each row's mean, ci95 and n in experiments/*/results/summary.csv;"
          " Holm-Bonferroni over each table. Paired tests need the per-seed data (not committed yet).")
    for name, spec in TABLES.items():
        if args.study is None or name in args.study:
            show(name, restate(name, spec, args.margin, cache), args.margin)
    if args.study is None or "smollm2" in args.study:
        show("smollm2 (inputs: the README's rounded figures, 3 seeds per arm)", smollm2(args.margin), args.margin)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Every figure the READMEs state, recomputed from the per-run data the repository holds.

    .venv/bin/python -m experiments.check            # exit 1 on any mismatch, listing each
    .venv/bin/python -m experiments.check --write    # re-render the READMEs' figure tables from the results

Two checks:

1. **Comparisons recompute from their runs.** A study's `results/` written by `cptlab-compare --archive` holds
   `runs/` (each run's summary.json, metrics.csv and config: cptlab.compare.archive) and the comparison's options.
   The comparison is run again from those files alone (tables only, no plots) and every cell of the committed
   `summary.csv` and `harness.csv` must come out the same (the `run_dir` column, a path on the machine that ran
   it, aside).
2. **README figures come from those tables.** A figure table in a markdown file is a generated block:

       <!-- figures: experiments/smollm2_replay/results/summary.csv | label=run | n | forgetting=en Δbpb -->
       | run | n | en Δbpb |
       ...
       <!-- /figures -->

   Between `figures:` and `-->`, separated by `|`: the CSV (from the repository root), then its columns, each
   `column[:format][=title]` (format: a Python format spec, default `+.4f` for changes, `.4f` otherwise; a
   column with a `<column>_ci95` beside it prints `mean ± half-width`), and filters `column==value` that keep
   only the rows holding that value. The block's text must be what the CSV renders to: editing a number by hand
   fails the check.

   The source may also be run records (JSON, a glob, from the repository root): `RUNS/*/summary.json` gives a row
   per file, its nested keys joined with dots (`domains.zh.bpb_end`); `RUNS/*/summary.json#domains` a row per
   entry of that mapping, its name in `key`, its fields by name and the record's top-level fields as `@name`;
   a null, or a field some rows lack, prints as a dash.
   An archive's runs/ holds those records, so single runs (the demo) are checked the same way.

A study `results/` whose summary.csv has no `runs/` beside it (a comparison made without --archive) fails: its
figures cannot be recomputed.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cptlab.utils.io import atomic_write_text

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"<!-- figures: (?P<spec>.*?) -->\n(?P<body>.*?)<!-- /figures -->", re.S)
SIGNED = ("learning", "forgetting", "delta", "_vs_ref")
COMPARED_FILES = ("summary.csv", "harness.csv", "merge.csv")
IGNORED = ("run_dir",)


# -- 1. comparisons recompute from their runs ------------------------------------------------------------------

def archives(root: Path) -> list[Path]:
    """Every archived comparison's runs/ directory under root's experiments/ and docs/."""
    from cptlab.compare.archive import OPTIONS

    found = []
    for top in ("experiments", "docs"):
        found += sorted(p.parent for p in (root / top).rglob(f"runs/{OPTIONS}"))
    return found


def unarchived(root: Path) -> list[Path]:
    """Directories under a study's results/ holding a summary.csv but no per-run data."""
    return sorted(p.parent for p in (root / "experiments").glob("*/results/**/summary.csv")
                  if not (p.parent / "runs").is_dir())


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return [{k: v for k, v in row.items() if k not in IGNORED} for row in csv.DictReader(f)]


def table_mismatches(name: str, committed: list[dict], recomputed: list[dict]) -> list[str]:
    """One line per cell that differs (rows matched by position; a different row count is one line)."""
    if len(committed) != len(recomputed):
        return [f"{name}: {len(committed)} rows committed, {len(recomputed)} recomputed"]
    out = []
    for i, (a, b) in enumerate(zip(committed, recomputed)):
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                out.append(f"{name}: row {i + 1} ({a.get('label')!r}) {key}: committed {a.get(key)!r}, "
                           f"recomputed {b.get(key)!r}")
    return out


def recompute(archive: Path) -> list[str]:
    """Run the archived comparison again from its runs; the mismatches with the committed tables."""
    from rich.console import Console

    from cptlab.cli.compare import compare
    from cptlab.compare.archive import read_options

    options = read_options(archive)
    results = archive.parent
    with tempfile.TemporaryDirectory(prefix="cptlab-check-") as tmp:
        compare([archive / p for p in options["paths"]], out=Path(tmp), old=options.get("old"),
                new=options.get("new"), reference=options.get("reference"), budgets=options.get("budgets"),
                margin=options["margin"], plots=False, console=Console(file=io.StringIO()))
        problems = []
        for name in COMPARED_FILES:
            mine, theirs = results / name, Path(tmp) / name
            if mine.is_file() != theirs.is_file():
                problems.append(f"{mine}: {'committed' if mine.is_file() else 'missing'} but "
                                f"{'recomputed' if theirs.is_file() else 'not recomputed'}")
            elif mine.is_file():
                problems += table_mismatches(str(mine.relative_to(ROOT) if mine.is_relative_to(ROOT) else mine),
                                             read_rows(mine), read_rows(theirs))
    return problems


# -- 2. README figures come from the tables ----------------------------------------------------------------------

@dataclass
class Column:
    name: str
    fmt: str | None
    title: str


def parse_spec(spec: str) -> tuple[str, list[Column], dict[str, str]]:
    parts = [p.strip() for p in spec.split("|")]
    columns, filters = [], {}
    for part in parts[1:]:
        if "==" in part:
            key, value = part.split("==", 1)
            filters[key.strip()] = value.strip()
            continue
        name, _, title = part.partition("=")
        name, _, fmt = name.partition(":")
        columns.append(Column(name.strip(), fmt.strip() or None, title.strip() or name.strip()))
    return parts[0], columns, filters


def cell(row: dict[str, str], col: Column) -> str:
    value = row.get(col.name)
    if value is None:
        raise KeyError(col.name)
    try:
        number = float(value)
    except ValueError:
        return value.replace("|", "\\|")
    if col.fmt is None and value.lstrip("-").isdigit():
        return value
    fmt = col.fmt or ("+.4f" if any(s in col.name for s in SIGNED) else ".4f")
    text = format(number, fmt)
    ci = row.get(f"{col.name}_ci95")
    if ci:
        text += " ± " + format(float(ci), fmt.lstrip("+"))
    return text


MISSING = "—"  # a record's null, or a field one record of the table lacks


def flatten(value, prefix: str = "") -> dict[str, str]:
    """{dotted key: text} of a JSON value's scalars (numbers as Python prints them: every digit kept) and lists of
    scalars (items joined by ", ")."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}{key}."))
        return out
    if isinstance(value, list):  # a run's overrides: its items joined; a list of mappings is not a figure
        if any(isinstance(item, (dict, list)) for item in value):
            return {}
        return {prefix[:-1]: ", ".join(str(item) for item in value)}
    return {prefix[:-1]: MISSING if value is None else str(value)}


def record_rows(source: str, root: Path) -> list[dict[str, str]]:
    """Rows from run records: `GLOB` (a row per file) or `GLOB#KEY` (a row per entry of the mapping at KEY)."""
    pattern, _, key = source.partition("#")
    files = sorted(root.glob(pattern))
    if not files:
        raise OSError(f"no file matches {pattern}")
    rows = []
    for path in files:
        record = json.loads(path.read_text(encoding="utf-8"))
        if not key:
            rows.append(flatten(record))
            continue
        top = {f"@{k}": v for k, v in flatten({k: v for k, v in record.items() if not isinstance(v, dict)}).items()}
        for name, entry in (record.get(key) or {}).items():
            rows.append({**top, **flatten(entry), "key": name})
    return rows


TEXT_COLUMNS = ("label", "metric", "status", "key", "@name", "@overrides", "overrides")  # left-aligned


def render(spec: str, root: Path) -> str:
    path, columns, filters = parse_spec(spec)
    if path.partition("#")[0].endswith(".json"):
        rows = record_rows(path, root)
        for col in columns:  # a field no record has is a mistake in the spec; one some records lack, a dash
            if not any(col.name in r for r in rows):
                raise KeyError(col.name)
            for r in rows:
                r.setdefault(col.name, MISSING)
    else:
        with open(root / path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    rows = [r for r in rows if all(r.get(k) == v for k, v in filters.items())]
    aligns = ["---" if c.name in TEXT_COLUMNS else "---:" for c in columns]
    lines = ["| " + " | ".join(c.title for c in columns) + " |", "|" + "|".join(aligns) + "|"]
    lines += ["| " + " | ".join(cell(r, c) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def markdown_files(root: Path) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").rglob("*.md")), *sorted((root / "experiments").rglob("*.md"))]


def check_blocks(md: Path, root: Path, problems: list[str], differs: list[str]) -> tuple[str, int]:
    """`md`'s text with every figure block re-rendered, and the number of blocks; a block that cannot be rendered
    (its source unreadable, a field no row has) adds a line to `problems`, one whose text differs from what its
    source renders a line to `differs`."""
    seen = 0

    def replace(m: re.Match) -> str:
        nonlocal seen
        seen += 1
        spec = m.group("spec")
        try:
            expected = render(spec, root)
        except (OSError, KeyError, ValueError) as err:
            problems.append(f"{md.relative_to(root)}: figures block '{spec}': {err!r}")
            return m.group(0)
        if m.group("body") != expected:
            differs.append(f"{md.relative_to(root)}: figures block '{spec.split('|')[0].strip()}' differs "
                           "from what its CSV renders (python -m experiments.check --write re-renders it)")
        return f"<!-- figures: {spec} -->\n{expected}<!-- /figures -->"

    return BLOCK.sub(replace, md.read_text(encoding="utf-8")), seen


def figure_mismatches(root: Path, write: bool = False) -> tuple[list[str], int]:
    """(one line per figure block that cannot be rendered or whose text differs from what its source renders,
    blocks seen); `write`: re-render them, so only the blocks that cannot be rendered are left to report."""
    problems, differs, seen = [], [], 0
    for md in markdown_files(root):
        if not md.is_file():
            continue
        new, count = check_blocks(md, root, problems, differs)
        seen += count
        if write and new != md.read_text(encoding="utf-8"):
            atomic_write_text(md, new)  # a killed --write leaves the page whole
    return problems + ([] if write else differs), seen


def main(argv: list[str] | None = None, root: Path = ROOT) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="re-render the markdown figure blocks")
    args = parser.parse_args(argv)
    problems = []
    found = archives(root)
    for archive in found:
        problems += recompute(archive)
    figure_problems, blocks = figure_mismatches(root, write=args.write)
    problems += figure_problems
    problems += [f"{results.relative_to(root)}: summary.csv without runs/ (no per-run data to recompute it from: "
                 "re-run its comparison with cptlab-compare --archive)" for results in unarchived(root)]
    for line in problems:
        print(f"mismatch: {line}", file=sys.stderr)
    print(f"{len(found)} archived comparisons recomputed, {blocks} figure blocks checked, "
          f"{len(problems)} mismatches")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

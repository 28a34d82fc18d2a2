"""`cptlab-compare --archive`: keep, beside the comparison, each compared run's record — summary.json,
metrics.csv, the composed config with its overrides and cptlab-merge's scores, a few kilobytes a run, no
checkpoints — and the options the comparison ran with, so that the comparison recomputes from its output
directory alone
(`cptlab-compare OUT/runs --out ...`, or `python -m experiments.check` for the studies).

    OUT/runs/<run path below the runs' common directory>/{summary.json, metrics.csv, .hydra/*.yaml, merge*.json}
    OUT/runs/compare.json      {"paths": [...], "old": [...], "new": [...], "reference": ..., "budgets": {...},
                                "margin": ...}: the paths given, below OUT/runs, in their order (it orders the rows)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from cptlab.errors import CptlabError
from cptlab.rundir import layout
from cptlab.utils.io import atomic_write_bytes, atomic_write_json, replace_dir

RUNS = "runs"
OPTIONS = "compare.json"
ARCHIVE_KIND = "compare-archive"  # cptlab's output marker in OUT/runs (cptlab.utils.io.mark_output)
KEPT = (layout.SUMMARY, layout.METRICS, layout.CONFIG, layout.OVERRIDES, *layout.MERGES)


def common_root(paths: list[Path]) -> Path:
    """The deepest directory holding every run (a single run: its parent, so the run keeps its name)."""
    resolved = [p.resolve() for p in paths]
    root = Path(os.path.commonpath(resolved))
    return root.parent if root in resolved else root


def archive_runs(run_dirs: list[Path], out: Path, options: dict, given: list[Path]) -> Path:
    """Copy the record files (KEPT) of `run_dirs` under out/runs/, each run at its path below their common root,
    and write the comparison's options with the `given` paths (sweeps or runs) as they lie in the archive;
    returns out/runs. A file a run lacks is left out. Refuses to archive a run into itself (out inside one of the
    runs) and to replace an out/runs that cptlab did not write."""
    dest = Path(out) / RUNS
    run_dir_paths = [Path(r) for r in run_dirs]
    root = common_root(run_dir_paths)
    for run in run_dir_paths:
        if dest.resolve().is_relative_to(run.resolve()):
            raise CptlabError(f"--archive: {dest} lies inside the compared run {run}; give --out elsewhere")

    def write(tmp: Path) -> None:
        for run in run_dir_paths:
            target = tmp / run.resolve().relative_to(root)
            for name in KEPT:
                src = run / name
                if src.is_file():  # a run still going has no summary yet
                    try:
                        atomic_write_bytes(target / name, src.read_bytes())
                    except OSError as err:
                        raise CptlabError(f"--archive: cannot copy {src}: {err.strerror or err}") from err
        atomic_write_json(tmp / OPTIONS, {**options, "paths": given_paths(given, root)})

    # The whole archive is replaced, never added to (a run left from an earlier comparison would be recomputed
    # with this one), and only when cptlab wrote it: a directory of the user's at OUT/runs is refused.
    return replace_dir(dest, write, kind=ARCHIVE_KIND, what="--archive", prog="cptlab-compare")


def given_paths(given: list[Path], root: Path) -> list[str]:
    """The paths the comparison was given, below the archive's root, in their order (it orders the rows)."""
    paths = []
    for path in given:
        below = Path(path).resolve()
        # A path given above the runs' common root (a sweep holding a single run): the archive root itself.
        paths.append(below.relative_to(root).as_posix() if below.is_relative_to(root) else ".")
    return paths


def read_options(archive: Path) -> dict:
    """The options an archived comparison ran with (archive_runs), for recomputing it: `paths` below `archive`."""
    path = Path(archive) / OPTIONS
    try:
        options = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CptlabError(f"{path}: unreadable ({err}); re-run cptlab-compare --archive") from err
    if not isinstance(options, dict):
        raise CptlabError(f"{path}: expected a JSON object of cptlab-compare options")
    return options

"""Read a run's metrics.csv back as per-metric series (the CSV has one row per logging event)."""

from __future__ import annotations

import csv
from pathlib import Path

from cptlab.rundir.layout import METRICS


def read_series(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """{metric: [(step, value), ...]} from `run_dir/metrics.csv`; a metric logged twice for one step
    (a resumed run re-logging) keeps the last value."""
    path = Path(run_dir) / METRICS
    series: dict[str, dict[int, float]] = {}
    if not path.exists():
        return {}
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            step = int(float(row.get("step") or 0))
            for key, value in row.items():
                if key == "step" or value in ("", None):
                    continue
                series.setdefault(key, {})[step] = float(value)
    return {k: sorted(v.items()) for k, v in series.items()}


def eval_curve(series, domain: str, metric: str = "bpb") -> tuple[list[float], list[float]]:
    """(tokens_seen, value) pairs of val/<domain>/<metric>."""
    tokens = dict(series.get("trainer/tokens_seen", []))
    points = [(tokens.get(step, float("nan")), v) for step, v in series.get(f"val/{domain}/{metric}", [])]
    return [p[0] for p in points], [p[1] for p in points]

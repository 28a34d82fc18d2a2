"""metrics.csv in the run directory, kept across resumes.

Lightning's CSVLogger deletes an existing metrics.csv when a resumed run saves; this one loads it,
drops the rows a killed run logged after its last checkpoint (`truncate_after`), and rewrites the
file atomically on every save, so the curve of a resumed run is the curve of an uninterrupted one.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import yaml
from pytorch_lightning.loggers.logger import Logger
from pytorch_lightning.utilities import rank_zero_only

from cptlab.utils.io import atomic_write_text


class MetricsCSVLogger(Logger):
    def __init__(self, save_dir: str, filename: str = "metrics.csv"):
        super().__init__()
        self._save_dir = Path(save_dir)
        self.path = self._save_dir / filename
        self.rows: list[dict] = []
        if self.path.exists():
            with open(self.path, newline="", encoding="utf-8") as f:
                self.rows = [{k: v for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]

    @property
    def name(self) -> str:
        return "csv"

    @property
    def version(self) -> str:
        return ""

    @property
    def save_dir(self) -> str:
        return str(self._save_dir)

    @property
    def log_dir(self) -> str:
        return str(self._save_dir)

    @rank_zero_only
    def truncate_after(self, step: int) -> None:
        """Forget rows logged after `step` (the step a resumed run restarts from)."""
        self.rows = [r for r in self.rows if int(float(r["step"])) <= step]
        self.save()

    @rank_zero_only
    def log_hyperparams(self, params, *args, **kwargs) -> None:
        if isinstance(params, dict):
            atomic_write_text(self._save_dir / "hparams.yaml", yaml.safe_dump(params, sort_keys=False))

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.rows.append({"step": step if step is not None else len(self.rows), **metrics})

    @rank_zero_only
    def save(self) -> None:
        columns = sorted({k for r in self.rows for k in r} - {"step"})
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=["step", *columns], lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_text(self.path, buf.getvalue())

    @rank_zero_only
    def finalize(self, status: str) -> None:
        self.save()

"""The one way a run is built from its composed (and validated) config, up to fit: tokenizer, base tokenizer,
tokens-per-character stats, token caches, model, Lightning objects, in this order. cptlab-train, the GPU,
start-up and real-base benchmarks and the tests all call `build_run`, so what they measure is what users run.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig

from cptlab.data.tokens import DomainTokens
from cptlab.run import pipeline
from cptlab.run.guard import is_rank_zero
from cptlab.run.plan_values import DataPlan
from cptlab.run.validate import RunPlan
from cptlab.tokenizer.hf import load_tokenizer

# summary.json "setup": the coarse phases, each the sum of these stages of Run.stages.
SETUP_PHASES = {"tokenizer_s": ("tokenizer", "base_tokenizer", "tokenizer_stats"), "data_s": ("data",),
                "model_s": ("model", "lightning")}  # fmt: skip


@dataclass
class Run:
    cfg: DictConfig
    run_dir: Path
    tokenizer_dir: Path
    tokenizer: Any
    base_dir: Path | None
    domains: list[DomainTokens]
    model: Any
    base_rows: int
    lightning: pipeline.Lightning
    tokenizer_stats: dict
    data: DataPlan  # what the domains were built from (the plan's): the split record of summary.json
    stages: dict[str, float] = field(default_factory=dict)  # seconds per build stage, in order

    @property
    def setup(self) -> dict[str, float]:
        """Seconds per set-up phase (tokenizer, data, model): with warm shared caches a sweep's later jobs spend
        almost nothing in the first two."""
        return {phase: round(sum(self.stages.get(s, 0.0) for s in parts), 3) for phase, parts in SETUP_PHASES.items()}

    @property
    def trainer(self) -> pl.Trainer:
        return self.lightning.trainer

    def fit(self, ckpt_path: str | None = None) -> None:
        self.trainer.fit(self.lightning.module, datamodule=self.lightning.datamodule, ckpt_path=ckpt_path)


class _Stages:
    """Seconds between successive marks, from `started` (so the first stage counts what came before it)."""

    def __init__(self, started: float | None):
        self.last, self.seconds = started or time.time(), {}

    def mark(self, name: str) -> None:
        now = time.time()
        self.seconds[name] = round(now - self.last, 3)
        self.last = now


def build_run(plan: RunPlan, run_dir: Path, *, started: float | None = None) -> Run:
    """Everything `cptlab-train` builds before fit, for a validated run (`RunPlan.from_config(cfg)`); `started`
    is when the run began (its first stage then includes what came before, e.g. validation)."""
    cfg, parts = plan.cfg, plan.parts
    run_dir = Path(run_dir)
    pipeline.check_base_split(parts)  # before any heavy work: never score documents the base trained on
    pl.seed_everything(parts.seed, workers=True, verbose=False)
    if plan.trainer.num_threads:
        torch.set_num_threads(plan.trainer.num_threads)
    stages = _Stages(started)
    tokenizer_dir = pipeline.build_tokenizer(parts, run_dir)
    tokenizer = load_tokenizer(tokenizer_dir)
    stages.mark("tokenizer")
    base_dir = pipeline.build_base_tokenizer(parts, run_dir)
    stages.mark("base_tokenizer")
    tokenizer_stats = pipeline.tokenizer_stats(parts.data, tokenizer_dir, base_dir)
    stages.mark("tokenizer_stats")
    domains = pipeline.build_data(parts.data, tokenizer_dir)
    report_bad_text(domains, parts.data.on_bad_text)
    stages.mark("data")
    model, base_rows = pipeline.build_model(parts, tokenizer, load_tokenizer(base_dir) if base_dir else None,
                                            adapter=cfg.adapter)
    stages.mark("model")
    lightning = pipeline.build_lightning(plan, model, domains, tokenizer, run_dir, base_rows=base_rows)
    stages.mark("lightning")
    return Run(cfg, run_dir, tokenizer_dir, tokenizer, base_dir, domains, model, base_rows, lightning,
               tokenizer_stats, parts.data, stages.seconds)


def report_bad_text(domains: list[DomainTokens], policy: str) -> None:
    """Documents with invalid UTF-8 that data.on_bad_text accepted, said on the console (summary.json has them too)."""
    for d in domains:
        replaced, skipped = d.stats.get("bad_text_replaced", 0), d.stats.get("bad_text_skipped", 0)
        if (replaced or skipped) and is_rank_zero():
            done = f"{replaced} replaced invalid bytes with U+FFFD" if replaced else f"{skipped} skipped"
            print(f"cptlab-train: warning: data.domains.{d.name}: {replaced + skipped} documents with invalid UTF-8 "
                  f"({done}; data.on_bad_text={policy})", file=sys.stderr)

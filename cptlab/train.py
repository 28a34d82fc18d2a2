"""cptlab-train: compose the config, build tokenizer, data and model, fit, write the run record.

    cptlab-train experiment=demo_zh                  # a run (re-running it resumes it)
    cptlab-train -m experiment=demo_zh data.replay_ratio=0,0.25
"""

from __future__ import annotations

import os
import sys
import time
import traceback
import warnings
from pathlib import Path

import hydra
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

import cptlab.config  # noqa: F401  (registers the schema and resolvers before Hydra composes)
from cptlab import pipeline
from cptlab.checkpoint import resume_checkpoint
from cptlab.errors import CptlabError, RunDirRefused
from cptlab.run.guard import RunLock, check_inputs, is_rank_zero
from cptlab.run.record import RunRecord
from cptlab.run.summary import read_summary, render_table, write_summary
from cptlab.tokenizer.hf import load_tokenizer
from cptlab.tokenizer.prepare import extension_stats
from cptlab.utils.console import CONF_DIR, one_line, quiet_libraries
from cptlab.validate import config_warnings, validate


def train(cfg: DictConfig, run_dir: Path, *, validated: bool = False) -> tuple[dict, bool]:
    """One run, start to finish (or resumed from run_dir/checkpoints/last.ckpt).
    Returns the summary and whether this process is the global rank zero (the one that reports).
    `validated`: the caller has already run `validate(cfg)` (the CLI does, once per run)."""
    started = time.time()
    if not validated:
        validate(cfg)
    refuse_relaunch_in_multirun(cfg)
    pipeline.check_base_split(cfg)  # before any heavy work: never score documents the base trained on
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    if cfg.trainer.num_threads:
        torch.set_num_threads(cfg.trainer.num_threads)

    clock = SetupClock(started)
    tokenizer_dir = pipeline.build_tokenizer(cfg, run_dir)
    tokenizer = load_tokenizer(tokenizer_dir)
    base_dir = pipeline.build_base_tokenizer(cfg, run_dir)
    base_tokenizer = load_tokenizer(base_dir) if base_dir else None
    tokenizer_stats = pipeline.tokenizer_stats(cfg, tokenizer_dir, base_dir)
    clock.lap("tokenizer_s")
    domains = pipeline.build_data(cfg, tokenizer_dir)
    report_bad_text(domains, cfg.data.on_bad_text)
    clock.lap("data_s")
    model, base_rows = pipeline.build_model(cfg, tokenizer, base_tokenizer)
    run = pipeline.build_lightning(cfg, model, domains, tokenizer, run_dir)
    clock.lap("model_s")

    record = RunRecord(run_dir=run_dir, name=cfg.name, overrides=task_overrides(), domains=domains,
                       tokenizer_dir=tokenizer_dir, replay_ratio=cfg.data.replay_ratio,
                       tokens_per_batch=cfg.data.batch_size * cfg.data.seq_len, train_metrics=run.train_metrics,
                       evaluator=run.evaluator, publish_dir=cfg.publish_dir,
                       tokenizer_stats=tokenizer_stats,
                       vocabulary={"base_rows": base_rows, "final_tokens": len(tokenizer),
                                   "extension": extension_stats(tokenizer_dir)}, started=started,
                       setup=clock.laps, split=pipeline.split_record(cfg, domains))
    run.trainer.callbacks.append(record)
    run.trainer.fit(run.module, datamodule=run.datamodule, ckpt_path=resume_checkpoint(run_dir, run.module))
    # The record is written by the process that trained (a spawned rank under ddp_spawn): read it back.
    summary = record.summary or read_summary(run_dir)
    if run.trainer.is_global_zero and (summary or {}).get("status") != "completed":
        # The checkpoint was already at max_steps (killed after its final save): fit restored it and
        # had nothing to do, so the record is written from the restored state here.
        summary = record.finish(run.trainer, run.module)
    return summary, run.trainer.is_global_zero


def report_bad_text(domains, policy: str) -> None:
    """Documents with invalid UTF-8 that data.on_bad_text accepted, said on the console (summary.json has them too)."""
    for d in domains:
        replaced, skipped = d.stats.get("bad_text_replaced", 0), d.stats.get("bad_text_skipped", 0)
        if (replaced or skipped) and is_rank_zero():
            done = f"{replaced} replaced invalid bytes with U+FFFD" if replaced else f"{skipped} skipped"
            print(f"cptlab-train: warning: data.domains.{d.name}: {replaced + skipped} documents with invalid UTF-8 "
                  f"({done}; data.on_bad_text={policy})", file=sys.stderr)


class SetupClock:
    """Seconds spent in each set-up phase (tokenizer, data, model) before training starts: with warm
    shared caches a sweep's later jobs spend almost nothing in the first two (summary.json "setup")."""

    def __init__(self, started: float):
        self.last, self.laps = started, {}

    def lap(self, name: str) -> None:
        now = time.time()
        self.laps[name] = round(now - self.last, 3)
        self.last = now


def refuse_relaunch_in_multirun(cfg: DictConfig) -> None:
    """Lightning's ddp/fsdp re-execute the command line for the extra ranks; inside a local multirun
    that would start the whole sweep again in every rank. SLURM (submitit) starts the ranks itself."""
    strategy = str(cfg.trainer.strategy)
    relaunches = strategy.startswith(("ddp", "fsdp", "deepspeed")) and not any(w in strategy for w in ("spawn", "fork"))
    launched_externally = "LOCAL_RANK" in os.environ or int(os.environ.get("SLURM_NTASKS", "1")) > 1
    if (HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN and relaunches
            and not launched_externally):
        raise CptlabError(f"trainer.strategy={strategy} inside a local multirun would re-launch the whole sweep in "
                          "every rank: use trainer.strategy=ddp_spawn, or hydra/launcher=slurm_gpu (submitit: "
                          "SLURM starts the ranks)")


def task_overrides() -> list[str]:
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


# Failed jobs of this process's multirun: the sweep goes on, the command exits non-zero at the end.
FAILED_RUNS: list[str] = []


@hydra.main(config_path=str(CONF_DIR), config_name="train", version_base="1.3")
def hydra_main(cfg: DictConfig) -> None:
    quiet_libraries()
    # train.nan_policy=skip_batch skips a batch by returning None from training_step, on purpose.
    warnings.filterwarnings("ignore", message=".*`training_step` returned `None`.*")
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    previous = read_summary(run_dir)
    completed = bool(previous) and previous.get("status") == "completed"
    published = not cfg.publish_dir or (Path(cfg.publish_dir).expanduser() / "config.json").is_file()
    lock = RunLock(run_dir)
    try:
        validate(cfg)  # bad input is reported even when it is aimed at a completed run
        for warning in config_warnings(cfg):
            print(f"cptlab-train: warning: {warning}", file=sys.stderr)
        if is_rank_zero():  # the ranks Lightning or SLURM start share rank zero's directory
            lock.acquire()
            check_inputs(cfg, run_dir, cfg.train.on_changed_inputs)
            previous = read_summary(run_dir)  # train.on_changed_inputs=restart removed it
            completed = bool(previous) and previous.get("status") == "completed"
        if completed and published:
            print(f"cptlab-train: {run_dir} already completed; delete it to run again")
            render_table(previous)
            return
        summary, reporter = train(cfg, run_dir, validated=True)
    except Exception as err:
        message = str(err) if isinstance(err, CptlabError) else one_line(err)
        # A completed run's record is never overwritten by a later failure, nor a refused directory touched.
        if not completed and not isinstance(err, RunDirRefused):
            write_summary(run_dir, {"status": "failed", "error": message, "name": cfg.name,
                                    "overrides": task_overrides()})
        if os.environ.get("HYDRA_FULL_ERROR") == "1" or not isinstance(err, CptlabError):
            traceback.print_exc()
        print(f"cptlab-train: error: {message}", file=sys.stderr)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            FAILED_RUNS.append(f"{run_dir}: {message}")
            return
        sys.exit(2 if isinstance(err, CptlabError) else 1)
    finally:
        lock.release()
    if reporter and summary:
        render_table(summary)


if __name__ == "__main__":
    from cptlab.cli import train_main  # the front end: config errors in one line

    train_main()

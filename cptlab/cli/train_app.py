"""cptlab-train: compose the config, build tokenizer, data and model, fit, write the run record.

    cptlab-train experiment=demo_zh                  # a run (re-running it resumes it)
    cptlab-train -m experiment=demo_zh data.replay_ratio=0,0.25
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import traceback
import warnings
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

import cptlab.config  # noqa: F401  (registers the schema and resolvers before Hydra composes)
from cptlab.cli import full_error
from cptlab.errors import CptlabError, Interrupted, RunDirRefused, in_job, no_space
from cptlab.run.build import build_run
from cptlab.run.guard import Checked, RunLock, check_inputs, claim_run_dir, current_inputs, is_rank_zero, record_inputs
from cptlab.run.record import RunRecord
from cptlab.run.sweep import checked_plan
from cptlab.run.validate import RunPlan, config_warnings, validate
from cptlab.rundir.summary import read_summary, render_table, write_summary
from cptlab.training.checkpoint import resume_checkpoint
from cptlab.utils.console import CONF_DIR, one_line, quiet_libraries


def train(cfg: DictConfig, run_dir: Path, *, plan: RunPlan | None = None,
          inputs: dict | None = None) -> tuple[dict, bool]:
    """One run, start to finish (or resumed from run_dir/checkpoints/last.ckpt).
    Returns the summary and whether this process is the global rank zero (the one that reports).
    `plan`: the run's plan, when the caller validated `cfg` already (the CLI does, once per run).
    `inputs`: `check_inputs`'s result, recorded once the checkpoint is known to fit (the run starts)."""
    started = time.time()
    plan = plan or RunPlan.from_config(cfg)
    refuse_relaunch_in_multirun(cfg)
    run = build_run(plan, run_dir, started=started)
    record = RunRecord(run, overrides=task_overrides(), started=started)
    run.trainer.callbacks.append(record)
    ckpt_path = resume_checkpoint(run_dir, run.lightning.module)
    if inputs is not None:  # only now: a resume refused above leaves the run's record of its inputs as it was
        record_inputs(run_dir, inputs)
    run.fit(ckpt_path=ckpt_path)
    # The record is written by the process that trained (a spawned rank under ddp_spawn): read it back.
    summary = record.summary or read_summary(run_dir)
    if run.trainer.is_global_zero and (summary or {}).get("status") != "completed":
        # The checkpoint was already at max_steps (killed after its final save): fit restored it and
        # had nothing to do, so the record is written from the restored state here.
        summary = record.finish(run.trainer, run.lightning.module)
    return summary, run.trainer.is_global_zero


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


def job(cfg: DictConfig, checked: Checked | None = None) -> None:
    """One Hydra job of cptlab-train: the run in Hydra's output directory, its failure recorded there.
    `checked`: what the front end already did; without it (a sweep's job, Hydra's own front end) the job claims
    its directory, validates (unless the sweep's check did: cptlab.run.sweep.checked_plan), locks it and
    compares its inputs itself."""
    quiet_libraries()
    # train.nan_policy=skip_batch skips a batch by returning None from training_step, on purpose.
    warnings.filterwarnings("ignore", message=".*`training_step` returned `None`.*")
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    lock = checked.lock if checked is not None and checked.lock is not None else RunLock(run_dir)
    inputs = checked.inputs if checked is not None else None
    plan = checked.plan if checked is not None else checked_plan()  # None: the job validates
    previous = read_summary(run_dir)
    completed = bool(previous) and previous.get("status") == "completed"
    published = not cfg.publish_dir or (Path(cfg.publish_dir).expanduser() / "config.json").is_file()
    try:
        in_job(True)  # a signal from here on is an Interrupted error, recorded below (cptlab.errors)
        if checked is None:
            if is_rank_zero():  # a directory of the user's is refused before anything is written into it
                claim_run_dir(run_dir)
            if plan is None:
                plan = validate(cfg)  # bad input is reported even when it is aimed at a completed run
                for warning in config_warnings(cfg):
                    print(f"cptlab-train: warning: {warning}", file=sys.stderr)
            if is_rank_zero():  # the ranks Lightning or SLURM start share rank zero's directory
                lock.acquire()
                inputs = check_inputs(cfg, run_dir, cfg.train.on_changed_inputs)
                previous = read_summary(run_dir)  # train.on_changed_inputs=restart removed it
                completed = bool(previous) and previous.get("status") == "completed"
        if completed and published:
            print(f"cptlab-train: {run_dir} already completed; delete it to run again")
            render_table(previous)
            return
        if inputs is None and is_rank_zero():  # nothing was recorded to compare them with: computed only now
            inputs = current_inputs(cfg)
        summary, reporter = train(cfg, run_dir, plan=plan, inputs=inputs)
    except Exception as err:
        err = no_space(err) or err  # a full disk outside checkpoints: one line naming the path (cptlab.errors)
        message = str(err) if isinstance(err, CptlabError) else one_line(err)
        # A completed run's record is never overwritten by a later failure, nor a refused directory touched.
        if not completed and not isinstance(err, RunDirRefused):
            with contextlib.suppress(OSError, CptlabError):  # a full disk refuses the record too: the line still says
                write_summary(run_dir, {"status": "failed", "error": message, "name": cfg.name,
                                        "overrides": task_overrides()})
        if full_error() or not isinstance(err, CptlabError):
            traceback.print_exc()
        print(f"cptlab-train: error: {message}", file=sys.stderr)
        if HydraConfig.get().mode == RunMode.MULTIRUN and not isinstance(err, Interrupted):  # a signal stops the sweep
            FAILED_RUNS.append(f"{run_dir}: {message}")
            return
        sys.exit(getattr(err, "exit_status", 2) if isinstance(err, CptlabError) else 1)
    finally:
        in_job(False)
        lock.release()
    if reporter and summary:
        render_table(summary)


@hydra.main(config_path=str(CONF_DIR), config_name="train", version_base="1.3")
def hydra_main(cfg: DictConfig) -> None:
    """Hydra's own front end, for commands with Hydra's flags (--help, --cfg, --config-dir...)."""
    job(cfg)


if __name__ == "__main__":
    from cptlab.cli.train import train_main  # the front end: config errors in one line

    train_main()

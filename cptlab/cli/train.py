"""The `cptlab-train` console script, one pass from command to fit: the command composed once
(cptlab.cli.hydra_app); a bad override or value said in one line before Hydra writes anything or torch starts;
every job of a sweep validated before the first one trains; a run's directory claimed, locked and compared
with its recorded inputs once, here, before Hydra writes its files there; then the job (cptlab.cli.train_app)."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

from cptlab.cli import exit_if_jobs_failed, exit_with_error
from cptlab.cli.hydra_app import Command, compose_command, task_overrides
from cptlab.run.sweep import check_jobs, job_config, job_overrides, plain_overrides

__all__ = ["check_run", "check_sweep", "train_main"]


def check_run(command: Command):
    """A single run's checks, each once: run name, writable directories, the config's values, then (rank zero:
    the ranks Lightning or SLURM start share its directory) the run directory claimed and locked, and its
    recorded inputs compared with this command's. Returns what the job is handed (cptlab.run.guard.Checked)."""
    from cptlab.run.guard import (
        Checked,
        RunLock,
        check_inputs,
        check_run_name,
        check_writable,
        claim_run_dir,
        is_rank_zero,
    )
    from cptlab.run.validate import config_warnings, validate

    cfg = command.cfg
    run_dir = Path(os.path.abspath(os.path.expanduser(str(cfg.hydra.run.dir))))  # as Hydra's run_job makes it
    check_run_name(cfg)
    check_writable(run_dir, "hydra.run.dir, from paths.runs_dir / CPTLAB_RUNS")
    check_writable(Path(str(cfg.paths.cache_dir)), "paths.cache_dir / CPTLAB_CACHE")
    task = job_config(cfg)
    plan = validate(task)
    for warning in config_warnings(task):
        print(f"cptlab-train: warning: {warning}", file=sys.stderr)
    if not is_rank_zero():
        return Checked(plan=plan)
    claim_run_dir(run_dir)  # a directory of the user's is refused before Hydra writes into it
    lock = RunLock(run_dir).acquire()
    try:
        inputs = check_inputs(task, run_dir, str(task.train.on_changed_inputs))
    except BaseException:
        lock.release()
        raise
    return Checked(lock=lock, inputs=inputs, plan=plan)


def check_sweep(command: Command) -> None:
    """A multirun's checks: run name, writable sweep and cache directories, and every job composed (once: the
    launcher reuses it) and validated, so a bad value in job 2 stops the sweep before job 1 trains. Each job
    claims, locks and compares its own directory's inputs when it starts."""
    from cptlab.run.guard import check_run_name, check_writable

    cfg = command.cfg
    check_run_name(cfg)
    check_writable(Path(str(cfg.hydra.sweep.dir)).expanduser(), "hydra.sweep.dir")
    check_writable(Path(str(cfg.paths.cache_dir)), "paths.cache_dir / CPTLAB_CACHE")
    check_jobs(job_overrides(cfg, list(task_overrides(cfg))), command.compose_job)


def train_main() -> None:
    """The `cptlab-train` console script: config errors are reported before torch is even imported."""
    from cptlab.errors import interrupt_on_signals

    interrupt_on_signals("cptlab-train")  # before the checks: they may take the run directory's lock
    argv = sys.argv[1:]
    if not plain_overrides(argv):  # Hydra's own flags (--help, --cfg, --config-dir...): Hydra's front end
        from cptlab.cli.train_app import FAILED_RUNS, hydra_main

        hydra_main()
        exit_if_jobs_failed("cptlab-train", FAILED_RUNS, "job(s) of the sweep")
        return
    checked = None
    try:
        command = compose_command(argv, "train")
        if command.multirun:
            check_sweep(command)
        else:
            checked = check_run(command)
    except Exception as err:  # Hydra/OmegaConf errors: the message is what the user needs
        exit_with_error("cptlab-train", err)  # Interrupted: 128 + the signal's number
    from cptlab.cli.train_app import FAILED_RUNS, job

    try:
        command.run(functools.partial(job, checked=checked))
    finally:
        if checked is not None and checked.lock is not None:
            checked.lock.release()  # the job released it; this covers a failure before the job started
    exit_if_jobs_failed("cptlab-train", FAILED_RUNS, "job(s) of the sweep")

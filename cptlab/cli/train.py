"""The `cptlab-train` console script: compose-time errors turned into one line before Hydra (and torch) start,
every job of a sweep validated before the first one trains, and SIGTERM outside training one line too."""

from __future__ import annotations

import sys

from cptlab.cli import exit_if_jobs_failed, exit_with_error
from cptlab.run.sweep import check_command, first_sweep_point, plain_overrides

__all__ = ["first_sweep_point", "precheck_overrides", "precheck_run_dir", "train_main"]


def precheck_overrides(argv: list[str], prog: str = "cptlab-train") -> None:
    """Compose the config once with the command's overrides so that an unknown key, a wrong type or a
    missing group option fails with one line and no traceback; a multirun's jobs are each composed and
    validated (cptlab.run.sweep.check_jobs), so a bad value in job 2 stops the sweep before job 1 trains."""
    if not plain_overrides(argv):
        return
    try:
        check_command(argv, validate_jobs=True, then=precheck_run_dir)
    except Exception as err:  # Hydra/OmegaConf errors: the message is what the user needs
        exit_with_error(prog, err)  # Interrupted: 128 + the signal's number


def precheck_run_dir(cfg, multirun: bool) -> None:
    """Run and cache directories writable, the run directory free and started with these inputs: said in one
    line before Hydra writes its files and log there (cptlab.run.guard)."""
    from hydra.core.hydra_config import HydraConfig

    from cptlab.run.guard import precheck_run_dir as check

    HydraConfig.instance().set_config(cfg)  # resolves ${hydra:...} in the run directory's name
    try:
        check(cfg, multirun)
    finally:
        HydraConfig.instance().cfg = None


def train_main() -> None:
    """The `cptlab-train` console script: config errors are reported before torch is even imported."""
    from cptlab.errors import interrupt_on_signals

    interrupt_on_signals("cptlab-train")  # before the precheck: it may take the run directory's lock
    precheck_overrides(sys.argv[1:])
    from cptlab.cli.train_app import FAILED_RUNS, hydra_main

    hydra_main()
    exit_if_jobs_failed("cptlab-train", FAILED_RUNS, "job(s) of the sweep")

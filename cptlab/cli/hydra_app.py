"""Hydra driven by a front end, so that one command composes each config once.

`@hydra.main` composes the config itself, after the front end has had to compose it already to report a bad
override in one line and to check the run directory before Hydra writes into it. Here the front end composes
with Hydra's own machinery (the same search path, plugins and callbacks as `@hydra.main`), checks, and hands that
very config to Hydra's `run_job`; a multirun's jobs are composed once each by the front end, which checks them all
before the first one starts, and the launcher is given those configs instead of composing them again
(`ComposedJobs`). Commands with Hydra's own flags (`--help`, `--cfg`, `--config-dir`...) go to `@hydra.main`."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hydra._internal.config_loader_impl import ConfigLoaderImpl
from omegaconf import DictConfig, OmegaConf, read_write

from cptlab.run.sweep import MULTIRUN_FLAGS
from cptlab.utils.console import CONF_DIR

CONFIG_NAME = "train"


def task_overrides(cfg: DictConfig) -> tuple[str, ...]:
    """A composed config's own overrides (hydra.overrides.task): what identifies a job of a sweep."""
    return tuple(OmegaConf.to_container(cfg.hydra.overrides.task, resolve=False))


class ComposedJobs(ConfigLoaderImpl):
    """Hydra's config loader holding the jobs the front end composed (and checked) before the sweep: the sweeper
    (checking a batch) and the launcher ask for each job's config and get a copy of that one back instead of
    composing it again. A job it does not hold (another sweeper choosing values as it goes) is composed as Hydra
    would. A module-level class: a SLURM launcher pickles it with the jobs."""

    def __init__(self, loader: ConfigLoaderImpl):  # noqa: D107  (the same search path and repository)
        self.__dict__.update(loader.__dict__)
        self.composed: dict[tuple[str, ...], DictConfig] = {}

    def compose_job(self, master: DictConfig, overrides: list[str]) -> DictConfig:
        cfg = super().load_sweep_config(master, list(overrides))
        self.composed[tuple(overrides)] = cfg
        return cfg

    def load_sweep_config(self, master_config: DictConfig, sweep_overrides: list[str]) -> DictConfig:
        held = self.composed.get(tuple(sweep_overrides))  # asked twice: the sweeper checks, the launcher runs
        return copy.deepcopy(held) if held is not None else super().load_sweep_config(master_config, sweep_overrides)


@dataclass
class Command:
    """One command line, composed: `cfg` with its `hydra` node (HydraConfig is set to it), and for a multirun
    the loader its jobs are composed through (`compose_job(overrides)`)."""
    cfg: DictConfig
    multirun: bool
    _hydra: Any
    _loader: Any = None

    def compose_job(self, overrides: list[str]) -> DictConfig:
        """A job of this multirun, composed once (the launcher reuses it), with HydraConfig set to it."""
        from hydra.core.hydra_config import HydraConfig

        cfg = self._loader.compose_job(self.cfg, overrides)
        HydraConfig.instance().set_config(copy.deepcopy(cfg))  # ${hydra:...} resolves as in the job (this
        return cfg  # makes its hydra node read-only: the launcher's copy must stay writable for the job's number)

    def run(self, task: Callable[[DictConfig], Any]) -> None:
        """Run the task: one job in hydra.run.dir, or the sweep through its sweeper and launcher."""
        from hydra._internal.callbacks import Callbacks
        from hydra.core.plugins import Plugins
        from hydra.core.utils import run_job
        from hydra.types import HydraContext

        callbacks = Callbacks(self.cfg)
        if not self.multirun:
            callbacks.on_run_start(config=self.cfg, config_name=CONFIG_NAME)
            ret = run_job(hydra_context=HydraContext(config_loader=self._hydra.config_loader, callbacks=callbacks),
                          task_function=task, config=self.cfg, job_dir_key="hydra.run.dir", job_subdir_key=None)
            callbacks.on_run_end(config=self.cfg, config_name=CONFIG_NAME, job_return=ret)
            _ = ret.return_value  # a task that raised raises here
            return
        callbacks.on_multirun_start(config=self.cfg, config_name=CONFIG_NAME)
        sweeper = Plugins.instance().instantiate_sweeper(
            config=self.cfg, hydra_context=HydraContext(config_loader=self._loader, callbacks=callbacks),
            task_function=task)
        sweeper.sweep(arguments=list(task_overrides(self.cfg)))
        callbacks.on_multirun_end(config=self.cfg, config_name=CONFIG_NAME)


def compose_command(argv: list[str], job_name: str) -> Command:
    """Compose the command's config once, as `@hydra.main` would (a multirun: its sweep config, whose jobs are
    composed by `Command.compose_job`). Raises Hydra's / OmegaConf's own error for a bad override."""
    from hydra import version
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_config_search_path
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    import cptlab.config  # noqa: F401  (registers the schema and resolvers before Hydra composes)

    overrides = [a for a in argv if a not in MULTIRUN_FLAGS]
    multirun = len(overrides) < len(argv)
    version.setbase("1.3")
    GlobalHydra.instance().clear()
    hydra = Hydra.create_main_hydra2(task_name=job_name, config_search_path=create_config_search_path(str(CONF_DIR)))
    if multirun and not any(o.split("=")[0].lstrip("+~") == "hydra.mode" for o in overrides):
        overrides.append("hydra.mode=MULTIRUN")  # as Hydra's -m: each job's config says so too
    mode = RunMode.MULTIRUN if multirun else RunMode.RUN
    cfg = hydra.compose_config(CONFIG_NAME, overrides, run_mode=mode, with_log_configuration=True)
    if not multirun and cfg.hydra.mode == RunMode.MULTIRUN:  # a config that asks for a sweep without -m
        return compose_command(["-m", *argv], job_name)
    with read_write(cfg.hydra):
        cfg.hydra.mode = mode
    HydraConfig.instance().set_config(cfg)
    return Command(cfg, multirun, hydra, ComposedJobs(hydra.config_loader) if multirun else None)

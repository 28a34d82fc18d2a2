"""A multirun's jobs, known before Hydra launches them: every job's overrides as Hydra's basic sweeper expands
them (`-m a=1,2 b=x,y` and an experiment's `hydra.sweeper.params`), each composed and validated, so a sweep
with one bad value fails before its first job trains, naming that job and the key."""

from __future__ import annotations

import copy
from collections.abc import Callable

from omegaconf import DictConfig, open_dict, read_write

from cptlab.errors import CptlabError
from cptlab.run.validate import RunPlan
from cptlab.utils.console import one_line

MULTIRUN_FLAGS = ("-m", "--multirun")
# Hydra flags after which the arguments are not plain overrides (help, info, other config dirs).
PASSTHROUGH = ("--help", "-h", "--hydra-help", "--info", "-i", "--cfg", "-c", "--config-path", "-cp",
               "--config-name", "-cn", "--config-dir", "-cd", "--shell-completion", "-sc", "--resolve",
               "--package", "-p", "--version")
BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


def plain_overrides(argv: list[str]) -> bool:
    """Whether `argv` is overrides only (no --help, --cfg, other config dir...: those are Hydra's to handle)."""
    return not any(a.split("=")[0] in PASSTHROUGH for a in argv)


def first_sweep_point(overrides: list[str]) -> list[str]:
    """Each override with a sweep (`a=1,2`, `range(...)`) replaced by its first value."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    out = []
    for ov in OverridesParser.create().parse_overrides(overrides):
        if ov.is_sweep_override():
            first = next(iter(ov.sweep_string_iterator()))
            out.append(f"{ov.get_key_element()}={first}")
        else:
            out.append(ov.input_line)
    return out


def job_overrides(cfg: DictConfig, overrides: list[str]) -> list[list[str]]:
    """Every job's overrides, in the order Hydra's basic sweeper launches them: the config's
    `hydra.sweeper.params`, then the command line's (a key given in both: the command line's values), as a
    product. Another sweeper (an optimiser choosing values as it goes): only the first point is known."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if cfg.hydra.sweeper.get("_target_") != BASIC_SWEEPER:
        return [first_sweep_point(overrides)]
    params = [f"{key}={value}" for key, value in (cfg.hydra.sweeper.get("params") or {}).items()]
    parsed = OverridesParser.create().parse_overrides(params + overrides)
    return [list(job) for job in BasicSweeper.split_arguments(parsed, None)[0]]


def check_jobs(jobs: list[list[str]], compose_job: Callable[[list[str]], DictConfig] | None = None) -> None:
    """Compose and validate (cptlab.run.validate: no tokenizer, cache or model is built) every job of a sweep of
    several; the first bad one fails in one line naming it by number and by the values that set it apart.
    `compose_job(overrides)`: the job's config with its `hydra` node, HydraConfig set to it (the front end's, which
    the launcher reuses: cptlab.cli.hydra_app); by default Hydra's `compose` (an initialised GlobalHydra).
    Each job's plan is kept (`checked_plan`): the job does not validate itself again."""
    if len(jobs) < 2:
        return  # one job: validated by the run itself, as a single run is
    from hydra.core.hydra_config import HydraConfig

    from cptlab.run.guard import check_run_name
    from cptlab.run.validate import validate

    compose_job = compose_job or _compose_job
    varying = [o for o in dict.fromkeys(o for job in jobs for o in job) if not all(o in job for job in jobs)]
    for number, job in enumerate(jobs, 1):
        try:
            cfg = compose_job(job)
            task = job_config(cfg)
            check_run_name(task)
            _CHECKED[tuple(cfg.hydra.overrides.task)] = validate(task)
        except Exception as err:
            label = ",".join(o for o in job if o in varying) or ",".join(job)
            message = str(err) if isinstance(err, CptlabError) else one_line(err)
            raise CptlabError(f"job {number} of {len(jobs)} ({label}): {message} (no job was started)") from None
        finally:
            HydraConfig.instance().cfg = None


def job_config(cfg: DictConfig) -> DictConfig:
    """The config a job's task function gets: the composed one without its `hydra` node (as Hydra's run_job)."""
    task = copy.deepcopy(cfg)
    with read_write(task), open_dict(task):
        del task["hydra"]
    return task


# The plans of this process's sweep jobs that check_jobs validated, by their task overrides.
_CHECKED: dict[tuple[str, ...], RunPlan] = {}


def checked_plan() -> RunPlan | None:
    """The plan check_jobs built for the running Hydra job before the sweep started (None: not one of those)."""
    from hydra.core.hydra_config import HydraConfig

    return _CHECKED.get(tuple(HydraConfig.get().overrides.task)) if HydraConfig.initialized() else None


def _compose_job(job: list[str]) -> DictConfig:
    from hydra import compose
    from hydra.core.hydra_config import HydraConfig

    cfg = compose("train", overrides=job, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)  # ${hydra:...} resolves as in the job
    return cfg

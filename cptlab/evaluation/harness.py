"""Downstream tasks during training through lm-evaluation-harness (`eval.harness.*`): at step 0 and every
`eval.harness.every_n_steps` (default: with every bpb evaluation) the run's current weights, and the EMA weights
when the run keeps them, answer the configured tasks in-process on global rank zero. Metrics are logged as
`val/harness/<task>/<metric>` (and `<metric>_stderr`) on the `trainer/tokens_seen` axis; the seconds each
evaluation took are printed and recorded in summary.json ("harness").

The evaluation must leave training exactly as it was: the Python, numpy and torch RNG states are saved and
restored around it (a resumed run then draws what an uninterrupted one draws), the model goes back to train mode,
and no gradient is made. lm-eval is an optional extra (`pip install 'cptlab[eval]'`): this module imports it only
when a run has tasks, and torch only to run them (`check_harness` runs before torch loads). Local task YAMLs (the
built-in probes in cptlab/evaluation/tasks, eval.harness.include_path) run offline; lm-eval's own tasks are resolved
only when a task is not local.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
import math
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import yaml

from cptlab.errors import CptlabError

BUILTIN_TASKS = Path(__file__).resolve().parent / "tasks"
PREFIX = "val/harness/"
BOOTSTRAP_ITERS = 1000  # for the few metrics lm-eval bootstraps (accuracies have a closed-form stderr)
FEWSHOT_SEED = 1234


# -- checks before any heavy work --------------------------------------------------------------------------------


class _TaskLoader(yaml.SafeLoader):
    """Reads a task YAML as lm-eval does, without importing what `!function` names."""


_TaskLoader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))


def task_dirs(include_path: str | None) -> list[Path]:
    """The directories of local task YAMLs: the built-in probes, then eval.harness.include_path."""
    return [BUILTIN_TASKS] + ([Path(include_path).expanduser()] if include_path else [])


def local_tasks(dirs: list[Path]) -> dict[str, Path]:
    """{task, group or tag name: its YAML} of every task YAML under `dirs`; a file that does not parse, or is not
    a mapping, is a CptlabError naming it."""
    names: dict[str, Path] = {}
    for root in dirs:
        for path in sorted(root.rglob("*.yaml")):
            if any(part.startswith((".", "__")) for part in path.relative_to(root).parts):
                continue
            try:
                config = yaml.load(path.read_text(encoding="utf-8"), Loader=_TaskLoader)
            except (OSError, UnicodeDecodeError) as err:
                raise CptlabError(f"eval.harness.include_path: cannot read {path} ({err})") from None
            except yaml.YAMLError as err:
                mark = getattr(err, "problem_mark", None)
                where = f" at line {mark.line + 1}" if mark is not None else ""
                problem = getattr(err, "problem", None) or type(err).__name__
                raise CptlabError(f"eval.harness: the task YAML {path} does not parse ({problem}{where})") from None
            if not isinstance(config, dict):
                raise CptlabError(f"eval.harness: the task YAML {path} is not a mapping of task settings")
            found = [config.get("group")] if isinstance(config.get("group"), str) else []
            found += [config["task"]] if isinstance(config.get("task"), str) and not found else []
            tags = config.get("tag")
            found += [tags] if isinstance(tags, str) else [t for t in tags or () if isinstance(t, str)]
            for name in found:
                names.setdefault(name, path)
    return names


def lm_eval_installed() -> bool:
    return importlib.util.find_spec("lm_eval") is not None


def check_harness(harness, *, strategy: str = "auto") -> None:
    """eval.harness before any tokenizer, cache or model: lm-eval installed, include_path a directory whose task
    YAMLs parse, every task known (lm-eval's own index is read only for names that are not local)."""
    tasks = [str(t) for t in harness.tasks or ()]
    if not tasks:
        return
    if not lm_eval_installed():
        raise CptlabError(f"eval.harness.tasks={tasks} needs lm-evaluation-harness, which is not installed: "
                          "pip install 'cptlab[eval]' (or pip install lm-eval)")
    if harness.include_path and not Path(str(harness.include_path)).expanduser().is_dir():
        raise CptlabError(f"eval.harness.include_path={harness.include_path}: not a directory of task YAMLs")
    known = local_tasks(task_dirs(harness.include_path))
    missing = [t for t in tasks if t not in known]
    if missing:
        index = lm_eval_index()
        unknown = [t for t in missing if t not in index]
        if unknown:
            builtin = ", ".join(sorted(local_tasks([BUILTIN_TASKS])))
            raise CptlabError(f"eval.harness.tasks: unknown task '{unknown[0]}' (not an lm-eval task, nor in "
                              f"eval.harness.include_path={harness.include_path}; built in: {builtin})")


def lm_eval_index() -> set[str]:
    """Every task, group and tag name lm-eval itself ships (reading its index takes seconds)."""
    with quiet_lm_eval():
        from lm_eval.tasks import TaskManager

        return set(TaskManager(include_defaults=True).all_tasks)


@contextlib.contextmanager
def quiet_lm_eval():
    """lm-eval's INFO/WARNING chatter and its multiprocessing bootstrap kept out of a training run."""
    logger = logging.getLogger("lm_eval")
    level = logger.level
    logger.setLevel(logging.ERROR)
    previous = os.environ.get("DISABLE_MULTIPROC")
    os.environ["DISABLE_MULTIPROC"] = "1"
    bars = {}  # lm-eval's per-task progress bars: noise between cptlab's own progress lines
    for name, module in list(sys.modules.items()):
        if name.startswith("lm_eval") and isinstance(getattr(module, "tqdm", None), type):
            bars[name] = module.tqdm
            module.tqdm = functools.partial(module.tqdm, disable=True)
    try:
        yield
    finally:
        for name, bar in bars.items():
            sys.modules[name].tqdm = bar
        logger.setLevel(level)
        if previous is None:
            os.environ.pop("DISABLE_MULTIPROC", None)
        else:
            os.environ["DISABLE_MULTIPROC"] = previous


# -- running the tasks -------------------------------------------------------------------------------------------


@contextlib.contextmanager
def preserved_rng():
    """Python's, numpy's and torch's (CPU and CUDA) global RNG states, restored on exit: the harness (few-shot
    sampling, lm-eval's own seeding) never shifts what training draws next."""
    import torch

    state = (random.getstate(), np.random.get_state(), torch.get_rng_state(),
             torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None)
    try:
        yield
    finally:
        random.setstate(state[0])
        np.random.set_state(state[1])
        torch.set_rng_state(state[2])
        if state[3] is not None:
            torch.cuda.set_rng_state_all(state[3])


def flatten(results: dict, prefix: str = PREFIX) -> dict[str, float]:
    """lm-eval's results {task: {"acc,none": x, "acc_stderr,none": s, ...}} as {prefix + "task/acc": x,
    prefix + "task/acc_stderr": s}; a filter other than "none" is kept in the name (acc_strict-match); values
    lm-eval could not compute ("N/A") are left out."""
    out = {}
    for task, metrics in results.items():
        for key, value in metrics.items():
            if "," not in key or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            metric, filt = key.split(",", 1)
            if filt != "none":
                base, stderr = (metric[:-len("_stderr")], "_stderr") if metric.endswith("_stderr") else (metric, "")
                metric = f"{base}_{filt}{stderr}"
            if math.isfinite(float(value)):
                out[f"{prefix}{task}/{metric}"] = float(value)
    return out


class HarnessRunner:
    """The configured tasks, loaded once (at the first evaluation) and scored on a model as it is now."""

    def __init__(self, tasks: list[str], tokenizer, *, limit=None, num_fewshot=None, include_path=None,
                 batch_size: int = 16, max_length: int | None = None):
        self.tasks, self.tokenizer = [str(t) for t in tasks], tokenizer
        self.limit = None if limit is None else (int(limit) if limit >= 1 else float(limit))
        self.num_fewshot, self.include_path = num_fewshot, include_path
        self.batch_size, self.max_length = batch_size, max_length
        self.loaded = None
        self.setup_seconds = 0.0

    def load(self) -> None:
        started = time.perf_counter()
        with quiet_lm_eval():
            from lm_eval.tasks import TaskManager

            dirs = task_dirs(self.include_path)
            local = local_tasks(dirs)
            manager = TaskManager(include_path=[str(d) for d in dirs],
                                  include_defaults=any(t not in local for t in self.tasks))
            try:
                loaded = manager.load(self.tasks)
            except Exception as err:  # lm-eval raises KeyError/ValueError/... naming the task
                raise CptlabError(f"eval.harness.tasks: lm-eval cannot load {self.tasks}: "
                                  f"{' '.join(str(err).split())[:300]}") from None
        for task in loaded["tasks"].values():  # as lm_eval.simple_evaluate sets them up
            if self.num_fewshot is not None and task.get_config("num_fewshot") != 0:
                task.set_config(key="num_fewshot", value=int(self.num_fewshot))
            elif task.get_config("num_fewshot") is None:
                task.set_config(key="num_fewshot", value=0)
            task.set_fewshot_seed(seed=FEWSHOT_SEED)
        self.loaded = loaded
        self.setup_seconds = time.perf_counter() - started

    def run(self, model, prefix: str = PREFIX) -> dict[str, float]:
        """`prefix + task/metric` of every task (and group) on `model` as it is now."""
        if self.loaded is None:
            self.load()
        import torch

        from cptlab.evaluation.harness_lm import CptlabLM

        lm = CptlabLM(model, self.tokenizer, batch_size=self.batch_size, max_length=self.max_length)
        with quiet_lm_eval(), torch.no_grad():
            from lm_eval.evaluator import evaluate

            results = evaluate(lm=lm, task_dict=self.loaded, limit=self.limit, bootstrap_iters=BOOTSTRAP_ITERS,
                               log_samples=False)
        return flatten(results["results"], prefix)


def trained_texts(specs, *, seed: int, on_bad_text: str):
    """(demo source, text) -> whether a training domain of `specs` (DomainSpec) trains on that text: it reads the
    source and its held-out rule does not hold the text out (the built-in probes leave such texts out)."""
    from cptlab.data.tokens import heldout_rule

    rules = {}
    for spec in specs:
        if spec.role == "eval":
            continue
        rule = None
        for source in spec.sources:
            if str(source).startswith("demo:"):
                rule = rule or heldout_rule(spec, seed=seed, on_bad_text=on_bad_text)
                rules.setdefault(str(source), []).append(rule)
    return lambda source, text: any(not rule(text) for rule in rules.get(source, ()))

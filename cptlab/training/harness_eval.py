"""The harness evaluation as a training callback (eval.harness.*; the tasks and their runner:
cptlab.evaluation.harness): at step 0, every `every_n_steps` and at the last step, on global rank zero, without
disturbing the training RNG; its state goes into the checkpoint."""

from __future__ import annotations

import time

from cptlab.evaluation.harness import PREFIX, HarnessRunner, preserved_rng, trained_texts
from cptlab.training.callbacks import EveryNSteps, log_metrics, plain_line, tokens_seen
from cptlab.training.fsdp import full_parameters, is_fsdp


class HarnessEval(EveryNSteps):
    """val/harness/... at step 0, every `every_n_steps` and at the last step, on global rank zero (the others wait
    at a barrier; under FSDP, whose forward passes are collective, every rank scores the same requests and rank
    zero logs); `ema`: also the EMA weights (val_ema/harness/...). Runs after the bpb evaluation (PeriodicEval)
    and before the checkpoint of the same step; its state goes into the checkpoint (a resumed run does not score a
    step twice). The seconds each evaluation took are printed and kept in summary.json ("harness"), not in
    metrics.csv, whose curves a resumed or re-run run must reproduce exactly."""

    def __init__(self, runner: HarnessRunner, *, every_n_steps: int, tokens_per_batch: int, clock=None, ema=None,
                 prepare=None):
        self.runner, self.every, self.tokens_per_batch = runner, every_n_steps, tokens_per_batch
        self.clock, self.ema, self.prepare = clock, ema, prepare  # prepare(): once before the first evaluation
        self.first: dict[str, float] = {}
        self.latest: dict[str, float] = {}
        self.last_eval_step = -1
        self.seconds: list[float] = []

    def evaluate(self, trainer, pl_module) -> dict[str, float]:
        if self.clock:
            self.clock.pause()
        started, setup = time.perf_counter(), 0.0
        metrics: dict[str, float] = {}
        if trainer.is_global_zero or is_fsdp(trainer):
            with preserved_rng(), full_parameters(trainer, recurse=False):
                if self.runner.loaded is None:  # once per process: the probes' data, then lm-eval's tasks
                    if self.prepare is not None:
                        self.prepare()
                    self.runner.load()
                    setup = self.runner.setup_seconds = time.perf_counter() - started
                metrics = self.runner.run(pl_module.model)
                if self.ema is not None and self.ema.shadow:
                    with self.ema.swapped(pl_module.model):
                        metrics.update(self.runner.run(pl_module.model, prefix="val_ema/harness/"))
        if trainer.world_size > 1 and not is_fsdp(trainer):
            trainer.strategy.barrier("harness")
        step = trainer.global_step
        seconds = time.perf_counter() - started
        self.seconds.append(seconds - setup)  # the evaluation itself; loading the tasks once is reported apart
        metrics["trainer/tokens_seen"] = tokens_seen(trainer, self.tokens_per_batch)
        self.last_eval_step, self.latest = step, metrics
        if step == 0 or not self.first:
            self.first = dict(metrics)
        log_metrics(trainer, metrics, step)
        shown = [f"{k[len(PREFIX):]} {v:.3f}" for k, v in metrics.items()
                 if k.startswith(PREFIX) and not k.endswith("_stderr")]
        plain_line(trainer, f"[harness] step {step}/{trainer.max_steps}  " + "  ".join(shown)
                   + f"  ({seconds - setup:.1f} s" + (f"; tasks loaded in {setup:.1f} s" if setup else "") + ")")
        if self.clock:
            self.clock.resume()
        return metrics

    def state_dict(self):
        return {"first": self.first, "latest": self.latest, "last_eval_step": self.last_eval_step,
                "seconds": self.seconds}

    def load_state_dict(self, state):
        self.first, self.latest = dict(state["first"]), dict(state["latest"])
        self.last_eval_step, self.seconds = state["last_eval_step"], list(state["seconds"])

    def summary(self) -> dict:
        """summary.json "harness": per task metric its value at step 0 and at the end and the change, the
        seconds per evaluation and of the one-off task loading."""
        metrics = {}
        for key, end in self.latest.items():
            if key.startswith(PREFIX) and not key.endswith("_stderr"):
                start = self.first.get(key)
                metrics[key[len(PREFIX):]] = {
                    "start": start, "end": end, "delta": None if start is None else end - start,
                    "end_stderr": self.latest.get(key + "_stderr")}
        return {"tasks": self.runner.tasks, "limit": self.runner.limit, "metrics": metrics,
                "evaluations": len(self.seconds), "seconds": [round(x, 3) for x in self.seconds],
                "seconds_per_evaluation": (sum(self.seconds) / len(self.seconds)) if self.seconds else None,
                "setup_seconds": self.runner.setup_seconds}


def build_harness_eval(harness, tokenizer, *, specs, domains, seed: int, on_bad_text: str, every_default: int,
                       tokens_per_batch: int, clock=None, ema=None) -> HarnessEval | None:
    """The callback of a run's eval.harness (None without tasks). The built-in probes leave out every text a
    training domain trains on; an eval-role domain whose one source is a demo corpus lends them its documents
    (already in its token cache: the corpus is not read again)."""
    if not harness.tasks:
        return None
    runner = HarnessRunner(list(harness.tasks), tokenizer, limit=harness.limit, num_fewshot=harness.num_fewshot,
                           include_path=harness.include_path, batch_size=harness.batch_size)
    lent = {spec.name: str(spec.sources[0]) for spec in specs
            if spec.role == "eval" and len(spec.sources) == 1 and str(spec.sources[0]).startswith("demo:")}
    prepare = ProbePreparation(list(specs), [d for d in domains if d.name in lent], lent, seed, on_bad_text)
    return HarnessEval(runner, every_n_steps=harness.every_n_steps or every_default, tokens_per_batch=tokens_per_batch,
                       clock=clock, ema=ema, prepare=prepare)


class ProbePreparation:
    """Sets up the built-in probes for the run (cptlab.evaluation.probes.use_run) when the harness first runs: an object, not
    a closure, so the callback pickles into the processes trainer.strategy=ddp_spawn starts."""

    def __init__(self, specs, domains, lent: dict[str, str], seed: int, on_bad_text: str):
        self.specs, self.domains, self.lent, self.seed, self.on_bad_text = specs, domains, lent, seed, on_bad_text

    def __call__(self) -> None:
        from cptlab.evaluation import probes

        texts = {self.lent[d.name]: d.heldout_texts() for d in self.domains}
        probes.use_run(trained_texts(self.specs, seed=self.seed, on_bad_text=self.on_bad_text), texts)

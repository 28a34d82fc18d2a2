"""1. Training throughput: cptlab's Lightning path vs a plain `transformers.Trainer` loop.

Both train the same random-init Llama (same config, same seed), on the same packed token blocks (the first
`steps` global batches of cptlab's MixtureSampler), with the same batch size, sequence length, fp32, AdamW
hyper-parameters (lr, betas, eps, weight decay, warm-up + cosine, grad clip 1.0), thread count and number of
steps. Each side uses its AdamW implementation as a user gets it: the Trainer's documented default
(`adamw_torch_fused` on torch >= 2.8) and cptlab's `RowMaskedAdamW` (fused on CPU and CUDA). A third, diagnostic
side is cptlab with the fused kernel forced on its optimizer (was the proposed change; now a consistency check: it
should match the cptlab side, which already uses it); `optimizer_ab` times
the two optimizer steps alone.

The loops run in one process, each in its own thread, but never at once: they take turns step by step
(`Pacer`), so step k of every side meets the same background load. A step is clocked by a callback in each
loop from the moment the loop gets its turn back to the end of its next optimizer step, so data loading,
logging and callbacks count on every side; the first `warmup` steps are not timed. The headline ratio is the
median over k of (baseline step k time / cptlab step k time), two steps that ran back to back (robust to
bursts and drifts of other load on a shared machine); a side's tokens/s is batch tokens / its median step
time; the ratio of the medians and of the plain means are reported too.

cptlab side: the config is composed from conf/ (`experiment=demo_zh debug=smoke` with the model sized up) and
built with the same public functions as `cptlab-train` (pipeline.build_data / build_model / build_lightning),
then `trainer.fit(module, datamodule)`; held-out evaluation and checkpoints are pushed past the last step.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import time
from pathlib import Path

from benchmarks.common import SEED, BenchResult, Context, Ratio, matmul_peak, median


def _overrides(ctx: Context, steps: int) -> list[str]:
    s = ctx.sizes
    return [
        "experiment=demo_zh", "debug=smoke", "logger=csv",
        f"model.config.hidden_size={s.hidden}", f"model.config.intermediate_size={s.intermediate}",
        f"model.config.num_hidden_layers={s.layers}", f"model.config.num_attention_heads={s.heads}",
        f"model.config.num_key_value_heads={s.heads}", f"model.config.max_position_embeddings={max(512, s.seq_len)}",
        f"data.seq_len={s.seq_len}", f"data.batch_size={s.batch_size}",
        f"data.max_docs={s.train_docs}" if s.train_docs else "data.max_docs=null",
        f"trainer.max_steps={steps}", f"trainer.num_threads={s.threads}", "trainer.log_every_n_steps=10",
        "eval.every_n_steps=1000000000", "eval.max_blocks=2", "checkpoint.every_n_steps=1000000000",
        "optim.warmup_steps=2",  # learning-rate warm-up (both sides)
        f"paths.cache_dir={ctx.cache}", f"seed={SEED}",
    ]


def compose(overrides: list[str], output_dir: Path):
    """The run config `cptlab-train <overrides>` would see, with the output directory set, validated as
    `cptlab.cli.train_app.train` validates it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import open_dict

    import cptlab.config  # noqa: F401  (schema and resolvers)
    from cptlab.run.validate import validate
    from cptlab.utils.console import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose("train", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
    validate(cfg)
    return cfg


@contextlib.contextmanager
def _quiet():
    """No progress bars (the baseline runs with disable_tqdm) and no library chatter."""
    old = os.environ.get("CI")
    os.environ["CI"] = "true"
    levels = {}
    for name in ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric", "transformers"):
        levels[name] = logging.getLogger(name).level
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        if old is None:
            os.environ.pop("CI", None)
        else:
            os.environ["CI"] = old
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


class TrainingSetup:
    """The composed config, the tokenizer and the token caches, built once for every round."""

    def __init__(self, ctx: Context, steps: int):
        from cptlab.run import pipeline
        from cptlab.run.plan_values import data_plan_of
        from cptlab.tokenizer.hf import load_tokenizer

        self.ctx, self.steps = ctx, steps
        self.tokenizer_dir = ctx.base_tokenizer_dir
        self.tokenizer = load_tokenizer(self.tokenizer_dir)
        self.cfg = compose(_overrides(ctx, steps), ctx.path("train_runs", "compose"))
        self.domains = pipeline.build_data(data_plan_of(self.cfg), self.tokenizer_dir)
        self._round = 0

    @property
    def model_config(self) -> dict:
        from omegaconf import OmegaConf

        return OmegaConf.to_container(self.cfg.model.config)

    def build_cptlab(self):
        """(lightning objects, model): exactly what cptlab-train builds for this config."""
        from omegaconf import open_dict

        from cptlab.run import pipeline
        from cptlab.run.validate import RunPlan

        self._round += 1
        run_dir = self.ctx.path("train_runs", f"cptlab-{self._round}")
        cfg = self.cfg.copy()
        with open_dict(cfg):
            cfg.paths.output_dir = str(run_dir)
        plan = RunPlan.from_config(cfg)
        model, _ = pipeline.build_model(plan.parts, self.tokenizer, adapter=cfg.adapter)
        return pipeline.build_lightning(plan, model, self.domains, self.tokenizer, run_dir), model

    def blocks(self):
        """The token blocks of global batches 0..steps-1 of the run's mixture stream, in order: [steps*B, T]."""
        import torch

        from cptlab.data.mixture import MixtureSampler

        d = self.cfg.data
        sampler = MixtureSampler(self.domains, replay_ratio=d.replay_ratio, batch_size=d.batch_size,
                                 seq_len=d.seq_len, seed=self.cfg.seed)
        return torch.cat([sampler.batch(s)["input_ids"] for s in range(self.steps)])


def setup_for(ctx: Context) -> TrainingSetup:
    """The invocation's training setup (built once: the loader benchmark streams the same domains)."""
    if "training_setup" not in ctx.shared:
        s = ctx.sizes
        ctx.shared["training_setup"] = TrainingSetup(ctx, s.warmup_steps + s.train_steps)
    return ctx.shared["training_setup"]


class Pacer:
    """Runs several training loops step by step in turn (each in its own thread) and clocks every step.

    A side's step k is the time from getting its turn back after step k-1 (or the start of training) to the
    end of step k, so everything its loop does between two optimizer steps counts (data, forward, backward,
    optimizer, callbacks, logging), and the sides' step k run back to back: a burst of load from other
    processes hits them alike, which the medians and the per-pair ratios then discount.

    Nothing ever runs concurrently: the sides set up one at a time (`enter_setup` .. `begin`: model init
    and the Trainer's seeding use torch's global generator), wait for each other at `begin`, then step in turn.
    """

    def __init__(self, sides: tuple[str, ...], timeout_s: float = 1800.0):
        import threading

        self.sides, self.timeout_s = tuple(sides), timeout_s
        self.cond = threading.Condition()
        self.turn = self.sides[0]
        self.done: set[str] = set()
        self.failed: str | None = None
        self.step_s: dict[str, list[float]] = {side: [] for side in sides}
        self._start: dict[str, float] = {}
        self._setup_lock = threading.Lock()
        self._setup_holder: str | None = None
        self._all_set_up = threading.Barrier(len(self.sides), timeout=timeout_s)

    def enter_setup(self, side: str) -> None:
        if not self._setup_lock.acquire(timeout=self.timeout_s):
            raise TimeoutError(f"training benchmark: {side} waited {self.timeout_s:.0f} s to set up")
        self._setup_holder = side

    def _leave_setup(self, side: str) -> None:
        if self._setup_holder == side:
            self._setup_holder = None
            self._setup_lock.release()

    def _next(self, side: str) -> str:
        """The side after `side` in turn order that has not finished (under the lock)."""
        i = self.sides.index(side)
        for k in range(1, len(self.sides) + 1):
            other = self.sides[(i + k) % len(self.sides)]
            if other not in self.done:
                return other
        return side

    def _wait(self, side: str) -> None:
        with self.cond:
            ok = self.cond.wait_for(lambda: self.turn == side or self.failed is not None, timeout=self.timeout_s)
            if self.failed is not None:
                raise RuntimeError(f"training benchmark: the {self.failed} loop failed")
            if not ok:
                raise TimeoutError(f"training benchmark: {side} waited {self.timeout_s:.0f} s for its turn")
        self._start[side] = time.perf_counter()

    def begin(self, side: str) -> None:
        import threading

        self._leave_setup(side)
        try:
            self._all_set_up.wait()
        except threading.BrokenBarrierError:
            raise RuntimeError(f"training benchmark: the {self.failed} loop failed") from None
        self._wait(side)

    def step_end(self, side: str) -> None:
        self.step_s[side].append(time.perf_counter() - self._start[side])
        with self.cond:
            self.turn = self._next(side)
            self.cond.notify_all()
        self._wait(side)

    def end(self, side: str) -> None:
        with self.cond:
            self.done.add(side)
            self.turn = self._next(side)
            self.cond.notify_all()

    def fail(self, side: str) -> None:
        self._leave_setup(side)
        with self.cond:
            if side not in self.done:
                self.failed = side
                self._all_set_up.abort()
            self.cond.notify_all()


def _side_stats(step_s: list[float], warmup: int, tokens_per_step: int) -> dict:
    timed = step_s[warmup:]
    if not timed:
        raise RuntimeError(f"too few steps timed ({len(step_s)} steps, warm-up {warmup})")
    med = median(timed)
    return {"steps_timed": len(timed), "median_step_s": med, "steps_per_s": 1 / med,
            "tokens_per_s": tokens_per_step / med, "mean_tokens_per_s": len(timed) * tokens_per_step / sum(timed),
            "min_step_s": min(timed), "max_step_s": max(timed), "step_s": [round(t, 4) for t in step_s]}


def run_cptlab(setup: TrainingSetup, pacer: Pacer | None = None, callbacks=(), profiler=None,
               side: str = "cptlab", fused_adamw: bool = False) -> dict:
    """cptlab's loop: the Lightning objects cptlab-train builds, `trainer.fit(module, datamodule)`.

    `fused_adamw` (a diagnostic; cptlab already uses the fused kernel): the optimizer that the module's
    `configure_optimizers` hook returns is switched to torch's fused AdamW kernel before its first step."""
    import pytorch_lightning as pl
    import torch

    class Clock(pl.Callback):
        def __init__(self):
            self.threads: set[int] = set()

        def on_train_start(self, trainer, pl_module):
            if pacer:
                pacer.begin(side)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.threads.add(torch.get_num_threads())
            if pacer:
                pacer.step_end(side)

        def on_train_end(self, trainer, pl_module):
            if pacer:
                pacer.end(side)

    torch.set_num_threads(setup.ctx.sizes.threads)
    clock = Clock()
    try:
        if pacer:
            pacer.enter_setup(side)
        run, _ = setup.build_cptlab()
        # first: the other callbacks' work at the end of step k (logging, eval) counts in step k+1
        run.trainer.callbacks[:0] = [clock, *callbacks]
        if profiler is not None:  # Lightning's own per-hook timer (what Trainer(profiler="simple") sets)
            run.trainer.profiler = profiler
        if fused_adamw:
            _use_fused_adamw(run.module)
        run.trainer.fit(run.module, datamodule=run.datamodule)
    finally:
        if pacer:
            pacer.fail(side)
    optimizer = run.trainer.optimizers[0] if run.trainer.optimizers else None
    return {"threads_seen": sorted(clock.threads), "steps": run.trainer.global_step,
            "final_loss": float(run.train_metrics.latest.get("train/loss", float("nan"))),
            "optimizer": type(optimizer).__name__, "optimizer_fused": _fused(optimizer)}


def _use_fused_adamw(module) -> None:
    """Wrap the module's configure_optimizers hook so that the AdamW it returns steps with the fused kernel
    (torch reads `fused` from the parameter group at every step; the state is created at the first step)."""
    original = module.configure_optimizers

    def configure_optimizers():
        out = original()
        optimizer = out["optimizer"] if isinstance(out, dict) else out
        for group in optimizer.param_groups:
            group["fused"], group["foreach"] = True, False
        optimizer.defaults["fused"], optimizer.defaults["foreach"] = True, False
        return out

    module.configure_optimizers = configure_optimizers


def _fused(optimizer) -> bool | None:
    optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps it
    groups = getattr(optimizer, "param_groups", None)
    return bool(groups[0].get("fused")) if groups else None


def run_hf_trainer(setup: TrainingSetup, blocks, out_dir: Path, pacer: Pacer | None = None, callbacks=()) -> dict:
    """The plain loop, as transformers' documentation writes it: TrainingArguments + Trainer over a Dataset of
    packed blocks with labels = input_ids (run_clm.py's group_texts), default collator."""
    import torch
    from datasets import Dataset
    from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainerCallback, TrainingArguments

    cfg, s = setup.cfg, setup.ctx.sizes

    class Clock(TrainerCallback):
        def __init__(self):
            self.threads: set[int] = set()

        def on_train_begin(self, args, state, control, **kwargs):
            if pacer:
                pacer.begin("hf")

        def on_step_end(self, args, state, control, **kwargs):
            self.threads.add(torch.get_num_threads())
            if pacer:
                pacer.step_end("hf")

        def on_train_end(self, args, state, control, **kwargs):
            if pacer:
                pacer.end("hf")

    torch.set_num_threads(s.threads)
    clock = Clock()
    try:
        if pacer:
            pacer.enter_setup("hf")
        tok = setup.tokenizer
        config = LlamaConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                             pad_token_id=None, **setup.model_config)
        config.use_cache = False  # as cptlab's loader sets it: no KV cache in training
        torch.manual_seed(cfg.seed)
        model = LlamaForCausalLM(config)
        ids = blocks.tolist()
        dataset = Dataset.from_dict({"input_ids": ids, "labels": ids})
        args = TrainingArguments(
            output_dir=str(out_dir), max_steps=setup.steps, per_device_train_batch_size=cfg.data.batch_size,
            learning_rate=cfg.optim.lr, weight_decay=cfg.optim.weight_decay, adam_beta1=cfg.optim.betas[0],
            adam_beta2=cfg.optim.betas[1], adam_epsilon=cfg.optim.eps, max_grad_norm=cfg.optim.grad_clip,
            lr_scheduler_type="cosine", warmup_steps=cfg.optim.warmup_steps,  # optim: the documented default
            logging_steps=cfg.trainer.log_every_n_steps, save_strategy="no", report_to="none", disable_tqdm=True,
            use_cpu=True, dataloader_num_workers=0, dataloader_pin_memory=False, seed=cfg.seed,
        )
        trainer = Trainer(model=model, args=args, train_dataset=dataset, callbacks=[clock, *callbacks])
        result = trainer.train()
    finally:
        if pacer:
            pacer.fail("hf")
    return {"threads_seen": sorted(clock.threads), "steps": trainer.state.global_step,
            "final_loss": float(result.training_loss), "optim": str(getattr(args.optim, "value", args.optim)),
            "optimizer": type(trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer")
                              else trainer.optimizer).__name__,
            "optimizer_fused": _fused(trainer.optimizer)}


SIDES = ("hf", "cptlab", "cptlab_fused")


def run_paced(setup: TrainingSetup, blocks, out_dir: Path, sides=SIDES) -> tuple[Pacer, dict]:
    """The loops step by step in turn: cptlab in the main thread (Lightning installs signal handlers there
    only), the baseline and the diagnostic cptlab-with-fused-AdamW in worker threads."""
    import threading

    pacer = Pacer(sides)
    info: dict = {}
    workers = {"hf": lambda: run_hf_trainer(setup, blocks, out_dir, pacer),
               "cptlab_fused": lambda: run_cptlab(setup, pacer, side="cptlab_fused", fused_adamw=True)}

    def worker(side):
        try:
            info[side] = workers[side]()
        except BaseException as err:  # noqa: BLE001 - re-raised by the main thread
            info[f"{side}_error"] = err

    # disable_tqdm makes the Trainer print its logs instead: kept (it is the loop), but not on our terminal
    with _quiet(), contextlib.redirect_stdout(io.StringIO()):
        threads = [threading.Thread(target=worker, args=(side,), name=f"bench-{side}", daemon=True)
                   for side in sides if side != "cptlab"]
        for t in threads:
            t.start()
        try:
            info["cptlab"] = run_cptlab(setup, pacer)
        finally:
            for t in threads:
                t.join(timeout=pacer.timeout_s)
    for side in sides:
        if f"{side}_error" in info:
            raise info[f"{side}_error"]
    return pacer, info


def optimizer_ab(setup: TrainingSetup, blocks, steps: int) -> dict:
    """cptlab's AdamW step on this model unfused (how cptlab built it on CPU before the switch) vs with
    `fused=True` (what cptlab and the Trainer's default `adamw_torch_fused` use), alternating step by step;
    median milliseconds."""
    import torch

    from cptlab.model.load import load_model
    from cptlab.training.optim import build_optimizer

    cfg, s = setup.cfg, setup.ctx.sizes
    torch.set_num_threads(s.threads)
    model = load_model(None, config=setup.model_config, dtype="float32", vocab_size=len(setup.tokenizer), seed=SEED)
    batch = blocks[: s.batch_size]
    model(input_ids=batch, labels=batch).loss.backward()
    kw = dict(lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay, betas=cfg.optim.betas, eps=cfg.optim.eps)
    opts = {"cptlab_cpu": build_optimizer(model, fused=False, **kw), "fused": build_optimizer(model, fused=True, **kw)}
    times = {k: [] for k in opts}
    for i in range(steps + 2):
        for name, opt in opts.items():
            t0 = time.perf_counter()
            opt.step()
            if i >= 2:
                times[name].append(time.perf_counter() - t0)
    out = {f"{k}_ms": 1e3 * median(v) for k, v in times.items()}
    out["speedup"] = out["cptlab_cpu_ms"] / out["fused_ms"]
    return out


def model_flops(setup: TrainingSetup, blocks) -> dict:
    """FLOPs of one training step (forward + backward) of the benchmark model: counted by torch's
    FlopCounterMode on one real step, and from the 6·N·tokens + attention formula."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from cptlab.evaluation.bpb import token_nll
    from cptlab.model.load import load_model

    s, tok = setup.ctx.sizes, setup.tokenizer
    model = load_model(None, config=setup.model_config, dtype="float32", vocab_size=len(tok), seed=SEED)
    batch = blocks[: s.batch_size]
    targets = torch.roll(batch, -1, dims=1)
    counter = FlopCounterMode(display=False)
    with counter:
        token_nll(model, batch, targets).mean().backward()
    counted = counter.get_total_flops()
    by_op = {str(k): v for k, v in counter.get_flop_counts().get("Global", {}).items()}
    embed = model.get_input_embeddings().weight.numel()
    n_matmul = sum(p.numel() for p in model.parameters()) - embed  # the input embedding is a lookup, no FLOPs
    n_all = sum(p.numel() for p in model.parameters())
    tokens = s.batch_size * s.seq_len
    attention = 12 * s.layers * s.hidden * s.seq_len * tokens  # QK^T and AV, forward + backward, full (no mask saving)
    analytic = 6 * n_matmul * tokens + attention
    attn_counted = any("attention" in k for k in by_op)
    return {"params_total": n_all, "params_matmul": n_matmul, "tokens_per_step": tokens,
            "flops_per_step_counted": counted, "flops_per_step_analytic": analytic,
            "attention_counted": attn_counted,
            # the counter misses CPU SDPA kernels on some torch builds: add the analytic attention term then
            "flops_per_step": counted if attn_counted else counted + attention,
            "counted_by_op": by_op}


def _profiled(run_side, side: str, steps: int) -> dict:
    """Where a loop's step time goes: the torch profiler over `steps` steps (the run is stopped after them):
    operators by self CPU time, and the optimizer step's inclusive time. For cptlab also Lightning's
    SimpleProfiler, the median time per step of every hook / loop action, taken over the `steps` steps before
    the torch profiler's window (which slows the steps it records)."""
    import pytorch_lightning as pl
    from pytorch_lightning.profilers import SimpleProfiler
    from torch.profiler import ProfilerActivity, profile
    from transformers import TrainerCallback

    window = {"prof": None, "t0": None, "t1": None}
    first = 2 + steps if side == "cptlab" else 2  # cptlab: steps 3..2+steps for the hook timings

    def at_step(step: int) -> bool:
        """True when the run should stop."""
        if step == first:
            window["prof"] = profile(activities=[ProfilerActivity.CPU], record_shapes=False)
            with _no_fd2():
                window["prof"].__enter__()
            window["t0"] = time.perf_counter()
        elif step == first + steps and window["prof"] is not None:
            window["t1"] = time.perf_counter()
            with _no_fd2():
                window["prof"].__exit__(None, None, None)
            return True
        return False

    class LightningWindow(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if at_step(trainer.global_step):
                trainer.should_stop = True

    class HFWindow(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if at_step(state.global_step):
                control.should_training_stop = True

    hooks = SimpleProfiler() if side == "cptlab" else None
    with _quiet(), contextlib.redirect_stdout(io.StringIO()):
        if hooks is not None:
            run_side([LightningWindow()], hooks)
        else:
            run_side([HFWindow()])
    out = _summarise_profile(window["prof"], window["t1"] - window["t0"], steps)
    if hooks is not None:
        rows = {}
        for action, d in hooks.recorded_durations.items():
            per_step = len(d) >= first + steps  # called once per step (or more): its steps 3..2+steps
            sample = d[2:first] if per_step else d
            if sample:
                rows[action] = {"per_step": per_step, "calls": len(sample), "median_ms": 1e3 * median(sample)}
        top = sorted(rows.items(), key=lambda kv: kv[1]["median_ms"], reverse=True)[:20]
        out["lightning_actions"] = dict(top)
    return out


@contextlib.contextmanager
def _no_fd2():
    """Silence file descriptor 2 (the profiler's C++ side prints start/stop lines there)."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _summarise_profile(prof, wall_s: float, steps: int) -> dict:
    events = prof.key_averages()
    ops = [e for e in events if e.key.startswith("aten::")]
    op_self = sum(e.self_cpu_time_total for e in ops) / 1e6
    top = sorted(ops, key=lambda e: e.self_cpu_time_total, reverse=True)[:12]
    optimizer = sum(e.cpu_time_total for e in events if e.key.startswith("Optimizer.step")) / 1e6
    return {
        "steps": steps, "wall_ms_per_step": 1e3 * wall_s / steps,
        "aten_self_ms_per_step": 1e3 * op_self / steps,
        "outside_aten_share": max(0.0, 1 - op_self / wall_s),  # Python, framework, profiler overhead
        "optimizer_step_ms_per_step": 1e3 * optimizer / steps,
        "top_ops": [{"op": e.key, "self_ms_per_step": e.self_cpu_time_total / 1e3 / steps,
                     "share_of_aten": e.self_cpu_time_total / 1e6 / op_self, "calls_per_step": e.count / steps}
                    for e in top],
    }


def run(ctx: Context) -> BenchResult:
    import torch

    s = ctx.sizes
    res = BenchResult("training")
    setup = setup_for(ctx)
    blocks = setup.blocks()
    tokens_per_step = s.batch_size * s.seq_len
    peak_s = 0.5 if s.quick else 2.0
    peaks = [matmul_peak(s.peak_n, s.threads, peak_s)]
    pacer, info = run_paced(setup, blocks, ctx.path("train_runs", "hf"))
    peaks.append(matmul_peak(s.peak_n, s.threads, peak_s))
    peak = max(peaks)  # before and after training: the less disturbed one
    stats = {side: {**_side_stats(pacer.step_s[side], s.warmup_steps, tokens_per_step), **info[side]}
             for side in SIDES}
    # step k of the baseline and step k of cptlab ran back to back: their ratio is the least disturbed
    pairs = [h / c for h, c in zip(pacer.step_s["hf"][s.warmup_steps:], pacer.step_s["cptlab"][s.warmup_steps:])]
    flops = model_flops(setup, blocks)
    ctx.measured["train_steps_per_s"] = stats["cptlab"]["steps_per_s"]
    ctx.measured["train_tokens_per_s"] = stats["cptlab"]["tokens_per_s"]
    fps = {side: flops["flops_per_step"] * stats[side]["steps_per_s"] for side in stats}
    c, h, f = stats["cptlab"], stats["hf"], stats["cptlab_fused"]
    fused_pairs = [hh / ff for hh, ff in zip(pacer.step_s["hf"][s.warmup_steps:],
                                             pacer.step_s["cptlab_fused"][s.warmup_steps:])]
    opt_ab = optimizer_ab(setup, blocks, 10 if s.quick else 20)
    res.details = {
        "model": {**setup.model_config, "vocab_size": len(setup.tokenizer), **{k: flops[k] for k in (
            "params_total", "params_matmul")}},
        "seq_len": s.seq_len, "batch_size": s.batch_size, "tokens_per_step": tokens_per_step,
        "steps_per_run": setup.steps, "warmup_steps_untimed": s.warmup_steps, "threads": s.threads,
        "precision": "fp32", "sides": stats,
        "ratio_of_medians": c["tokens_per_s"] / h["tokens_per_s"],
        "ratio_of_means": c["mean_tokens_per_s"] / h["mean_tokens_per_s"],
        "median_of_pair_ratios": median(pairs), "pair_ratios": [round(p, 4) for p in pairs],
        "fused_ratio_of_medians": f["tokens_per_s"] / h["tokens_per_s"],
        "fused_median_of_pair_ratios": median(fused_pairs),
        "flops": {k: v for k, v in flops.items() if k != "counted_by_op"},
        "flops_by_op": flops["counted_by_op"],
        "matmul_peak_flops": peak, "matmul_peak_n": s.peak_n, "matmul_peak_before_after": peaks,
        "achieved_flops": fps, "optimizer_step_ab": opt_ab,
        "torch_threads_now": torch.get_num_threads(),
    }
    # Headline: the median over k of (baseline step k time / cptlab step k time), the two steps having run
    # back to back; the ratio of the sides' median tokens/s and of their means are in the note and the JSON.
    res.ratios.append(Ratio(
        "training.tokens_per_s_vs_hf_trainer", median(pairs),
        f"cptlab Lightning {c['tokens_per_s']:,.0f} tok/s", f"transformers.Trainer {h['tokens_per_s']:,.0f} tok/s",
        ">= 1.0", note=f"median of step pairs; ratio of medians {c['tokens_per_s'] / h['tokens_per_s']:.3f}, "
                       f"of means {c['mean_tokens_per_s'] / h['mean_tokens_per_s']:.3f}"))
    res.ratios.append(Ratio(
        "training.fused_adamw_cptlab_vs_hf_trainer", median(fused_pairs),
        f"cptlab + fused AdamW {f['tokens_per_s']:,.0f} tok/s", f"transformers.Trainer {h['tokens_per_s']:,.0f} tok/s",
        None, note=f"diagnostic: fused forced, as cptlab already does; ratio of medians "
                   f"{f['tokens_per_s'] / h['tokens_per_s']:.3f}"))
    res.ratios.append(Ratio(
        "training.cpu_mfu", fps["cptlab"] / peak,
        f"cptlab {fps['cptlab'] / 1e9:,.1f} GFLOP/s achieved",
        f"fp32 mm {s.peak_n}² peak {peak / 1e9:,.1f} GFLOP/s", None,
        note=f"HF Trainer: {fps['hf'] / peak:.3f}"))
    res.ratios.append(Ratio(
        "training.adamw_step_fused_speedup", opt_ab["speedup"],
        f"AdamW step unfused (cptlab before it switched to fused on CPU) {opt_ab['cptlab_cpu_ms']:.1f} ms",
        f"fused=True {opt_ab['fused_ms']:.1f} ms", None,
        note=f"{opt_ab['cptlab_cpu_ms'] - opt_ab['fused_ms']:.1f} ms of a {1e3 * c['median_step_s']:.0f} ms step"))
    if s.profile_steps:
        res.details["profile"] = {
            "cptlab": _profiled(lambda cbs, hooks: run_cptlab(setup, callbacks=cbs, profiler=hooks), "cptlab",
                                s.profile_steps),
            "hf": _profiled(lambda cbs: run_hf_trainer(setup, blocks, ctx.path("train_runs", "hf-profile"),
                                                       callbacks=cbs), "hf", s.profile_steps),
        }
    return res

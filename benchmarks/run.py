"""`python -m benchmarks [--quick] [--out FILE] [--only NAME,...]`: run the benchmarks, print a table of
ratios (each against a baseline measured in the same invocation) and write every number to JSON."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import traceback
from dataclasses import asdict
from pathlib import Path

from benchmarks.common import BenchResult, Context, Ratio, Sizes, environment

# In run order: the loader compares with the training steps/s, the tokenizer benchmark builds the extension.
BENCHMARKS = ("training", "loader", "pretokenize", "tokenizer", "startup", "corpus", "doc_masking")
# Every headline ratio the JSON holds (the smoke test checks them all).
RATIO_KEYS = {
    "training": ("training.tokens_per_s_vs_hf_trainer", "training.fused_adamw_cptlab_vs_hf_trainer",
                 "training.cpu_mfu", "training.adamw_step_fused_speedup"),
    "loader": ("loader.batches_per_s_vs_train_steps_per_s", "loader.rss_anon_growth_per_corpus_byte"),
    "pretokenize": ("pretokenize.num_proc1_vs_batch_encode", "pretokenize.num_proc2_vs_batch_encode"),
    "tokenizer": ("tokenizer.hf_vs_spm_encode_en", "tokenizer.hf_vs_spm_encode_zh",
                  "tokenizer.zh_tokens_per_char_extended_vs_base", "tokenizer.en_tokens_per_char_extended_vs_base"),
    "startup": ("startup.warm_vs_cold", "startup.warm_vs_import_floor"),
    "corpus": ("corpus.rss_growth_per_corpus_byte", "corpus.num_proc2_vs_num_proc1",
               "corpus.num_proc2_on_2_cpus_vs_num_proc1_on_1"),
    "doc_masking": ("doc_masking.masked_vs_plain_tokens_per_s",),
}
# Optional, not run by default (minutes, needs `make install-real`): `--real-base` adds it.
OPTIONAL = ("real_base",)
DEFAULT_OUT = Path("bench_results") / "bench.json"


def _module(name: str):
    import importlib

    return importlib.import_module(f"benchmarks.{name}")


def _ratio_keys(name: str) -> tuple[str, ...]:
    if name in OPTIONAL:
        return _module(name).RATIO_KEYS
    return RATIO_KEYS[name]


def run_all(sizes: Sizes, names: list[str], workdir: Path | None = None, keep: bool = False,
            log=lambda msg: None, real_rounds: int = 1,
            real_sides: tuple[str, ...] | None = None) -> tuple[list[BenchResult], Context]:
    ctx = Context(sizes, workdir)
    results = []
    try:
        for i, name in enumerate(names, 1):
            log(f"[{i}/{len(names)}] {name} ...")
            t0 = time.perf_counter()
            try:
                res = (_module(name).run(ctx, rounds=real_rounds, **({"sides": real_sides} if real_sides else {}))
                       if name == "real_base" else _module(name).run(ctx))
            except Exception as err:  # one failing benchmark must not hide the others' numbers
                res = BenchResult(name, error=f"{type(err).__name__}: {err}")
                res.details["traceback"] = traceback.format_exc()
                log(f"    {name} failed: {res.error}")
            res.seconds = time.perf_counter() - t0
            got = {r.key for r in res.ratios}
            for key in _ratio_keys(name):
                if key not in got:
                    res.ratios.append(Ratio(key, None, "not measured", f"{name} failed" if res.error else "", None))
            log(f"    {name} done in {res.seconds:.1f} s")
            results.append(res)
    finally:
        ctx.close(keep=keep)
    return results, ctx


def to_json(results: list[BenchResult], sizes: Sizes, env: dict, total_s: float) -> dict:
    return {
        "mode": "quick" if sizes.quick else "full",
        "environment": env,
        "sizes": asdict(sizes),
        "total_seconds": total_s,
        "ratios": {r.key: r.as_dict() for res in results for r in res.ratios},
        "benchmarks": {res.name: {"seconds": res.seconds, "error": res.error, "details": res.details,
                                  "ratios": [r.key for r in res.ratios]} for res in results},
    }


def _fmt(x: float | None) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    return f"{x:.3g}" if abs(x) < 1000 else f"{x:,.0f}"


def print_table(results: list[BenchResult], sizes: Sizes, total_s: float, out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"cptlab benchmarks ({'quick' if sizes.quick else 'full'}, {sizes.threads} threads) — "
                        "each ratio = measured / baseline, same invocation", title_justify="left")
    for col, kw in (("ratio", {"no_wrap": True}), ("value", {"justify": "right"}), ("measured", {}), ("baseline", {}),
                    ("target", {}), ("met", {"justify": "center"})):
        table.add_column(col, **kw)
    for res in results:
        for r in res.ratios:
            met = {True: "[green]yes[/]", False: "[red]no[/]", None: "—"}[r.met]
            measured = r.measured + (f" ({r.note})" if r.note else "")
            table.add_row(r.key, _fmt(r.value), measured, r.baseline, r.target or "info", met)
    console = Console(width=None if sys.stdout.isatty() else 180)
    console.print(table)
    for res in results:
        if res.error:
            console.print(f"[red]{res.name} failed:[/] {res.error}")
    console.print(f"total {total_s:.0f} s; every number in {out}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes and a few steps each (under a minute)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON results (default {DEFAULT_OUT})")
    parser.add_argument("--only", default=",".join(BENCHMARKS),
                        help=f"comma-separated subset of {','.join(BENCHMARKS)}")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="scratch directory (default: a temporary one, removed at the end)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary scratch directory")
    parser.add_argument("--real-base", action="store_true",
                        help="also run real_base: SmolLM2-135M (make install-real) vs transformers.Trainer, tokens/s "
                             "and peak RSS, with and without model.chunked_loss (~15 min on 2 cores)")
    parser.add_argument("--real-rounds", type=int, default=1,
                        help="real_base: rounds of its sides, alternating their order (default 1)")
    parser.add_argument("--real-sides", default=None, metavar="SIDE,...",
                        help="real_base: only these sides (default all: benchmarks/real_base.py SIDES), e.g. "
                             "hf_lora,cptlab_lora")
    parser.add_argument("--corpus-bytes", type=float, default=None,
                        help="text bytes of the corpus-scale benchmark's large corpus (default 1e9; --quick 4e6)")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS + OPTIONAL]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS + OPTIONAL)}")
    sides = tuple(s for s in (args.real_sides or "").split(",") if s) or None
    known = _module("real_base").SIDES
    if set(sides or ()) - set(known):
        parser.error(f"--real-sides: unknown side(s) {sorted(set(sides) - set(known))}; choose from {list(known)}")
    if args.real_base and "real_base" not in names:
        names.append("real_base")
    names = [n for n in BENCHMARKS + OPTIONAL if n in names]  # dependency order

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("WANDB_MODE", "offline")
    sizes = Sizes.make(args.quick, args.threads, corpus_bytes=int(args.corpus_bytes) if args.corpus_bytes else None)
    env = environment()

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    if "real_base" not in names:
        log("real_base (SmolLM2-135M vs transformers.Trainer: tokens/s, peak RSS) skipped: pass --real-base "
            "(needs make install-real; ~15 min on 2 cores)")
    t0 = time.perf_counter()
    results, _ = run_all(sizes, names, args.workdir, args.keep, log, real_rounds=args.real_rounds, real_sides=sides)
    total = time.perf_counter() - t0
    env["loadavg_1m_at_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(to_json(results, sizes, env, total), indent=2, default=str) + "\n")
    print_table(results, sizes, total, args.out)
    return 1 if any(r.error for r in results) else 0

"""6. Corpus scale: pre-tokenizing a generated corpus of many shard files, bigger than a test fixture (default
1 GiB, `--corpus-bytes`): tokens/s, peak RSS, RSS growth per corpus byte (a corpus 1/10 the size is the
baseline) and num_proc 1 vs 2 on the large corpus: with every CPU (what a user gets on this machine; with
num_proc=1 the encoder already runs one thread per CPU) and with the CPUs given out by affinity, one per process
(num_proc=1 on 1 CPU vs num_proc=2 on 2: how the shard pool scales with the cores it is given).

Each build runs `prepare_domain` in a child process (`python -m benchmarks.corpus prepare ...`) that reports its
own peak RSS (VmHWM, not `ru_maxrss`, which a child inherits from its parent), so one measurement never
inherits another's heap. The corpus is synthetic text
(Zipf-distributed words, a share of Chinese characters, one document per line) written as `.txt.gz` shards:
reading includes decompression, as on a real pre-tokenization job.

`python -m benchmarks.corpus train --corpus-bytes N` measures a whole short run instead (cptlab.cli.train_app with
data=files, tokenizer=train on a capped sample, trainer.max_steps=1) under /usr/bin/time -v, at N/10 and N.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import ROOT, BenchResult, Context, Ratio, peak_rss
from cptlab.data.tokens import usable_cpus

SHARDS = 16


def generate_corpus(out: Path, total_bytes: int, *, shards: int = SHARDS, seed: int = 0) -> int:
    """`shards` gzip files of one document per line holding about `total_bytes` bytes of text; returns the
    exact number of text bytes. Deterministic in (total_bytes, shards, seed); reused when already there."""
    import numpy as np

    out.mkdir(parents=True, exist_ok=True)
    done = out / "corpus.json"
    if done.is_file():
        info = json.loads(done.read_text())
        if info.get("requested") == total_bytes and info.get("shards") == shards and info.get("seed") == seed:
            return int(info["bytes"])
    rng = np.random.default_rng(seed)
    letters = np.array(list("etaoinshrdlucmfwypvbgkjqxz"))
    words = ["".join(rng.choice(letters, size=int(n))) for n in rng.integers(1, 11, size=20_000)]
    words += list("的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种面")
    weights = 1.0 / np.arange(1, len(words) + 1) ** 1.1
    weights /= weights.sum()
    # A pool of distinct lines; every document is a pool line plus its own number, so no two are equal.
    lengths = rng.integers(5, 120, size=50_000)
    drawn = rng.choice(len(words), size=int(lengths.sum()), p=weights)
    ends = np.cumsum(lengths)
    pool = [" ".join(words[i] for i in drawn[end - n : end]) for n, end in zip(lengths, ends)]
    per_shard, written, doc = total_bytes // shards, 0, 0
    for s in range(shards):
        lines, size = [], 0
        while size < per_shard:
            line = f"{pool[doc % len(pool)]} {doc}"
            lines.append(line)
            size += len(line.encode()) + 1
            doc += 1
        with gzip.open(out / f"shard-{s:04d}.txt.gz", "wt", encoding="utf-8", compresslevel=1) as f:
            f.write("\n".join(lines) + "\n")
        written += size
    done.write_text(json.dumps({"requested": total_bytes, "shards": shards, "seed": seed, "bytes": written}))
    return written


def prepare_child(corpus: Path, tokenizer_dir: Path, cache: Path, num_proc: int, cpus: int | None = None) -> dict:
    """Run one cache build in a fresh process (on its first `cpus` allowed CPUs when given); its report: tokens,
    documents, seconds, peak RSS (bytes)."""
    cmd = [sys.executable, "-m", "benchmarks.corpus", "prepare", "--corpus", str(corpus), "--tokenizer",
           str(tokenizer_dir), "--cache", str(cache), "--num-proc", str(num_proc)]
    cmd += ["--cpus", str(cpus)] if cpus else []
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    if proc.returncode:
        raise RuntimeError(f"prepare child failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _prepare(args) -> None:
    from cptlab.data.tokens import DomainSpec, prepare_domain

    if args.cpus:  # before any encoder starts: its thread count and the pool's workers inherit the mask
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: args.cpus])
    spec = DomainSpec(name="corpus", role="new", sources=(str(args.corpus),), heldout=0.002)
    t0 = time.perf_counter()
    dom = prepare_domain(spec, Path(args.tokenizer), Path(args.cache), num_proc=args.num_proc)
    seconds = time.perf_counter() - t0
    print(json.dumps({
        "seconds": seconds, "tokens": dom.n_train_tokens + dom.n_val_tokens,
        "docs": dom.n_train_docs + dom.n_val_docs,
        "peak_rss": peak_rss(),  # the building process; with num_proc > 1 the workers hold the shards' batches
    }))


def run(ctx: Context) -> BenchResult:
    s = ctx.sizes
    res = BenchResult("corpus")
    large_bytes = s.corpus_bytes
    small = generate_corpus(ctx.root / "corpus" / "small", large_bytes // 10)
    large = generate_corpus(ctx.root / "corpus" / "large", large_bytes)
    tok = ctx.base_tokenizer_dir
    runs, cpus = {}, usable_cpus()
    # num_proc is compared on the large corpus: on the small one the fixed start-up (imports, the encoder
    # check, the pool's interpreters) is a fifth of a build, and real corpora are larger still.
    builds = [("small_np1", "small", 1, None), ("large_np1", "large", 1, None), ("large_np2", "large", 2, None)]
    pinned = cpus >= 2 and hasattr(os, "sched_setaffinity")
    if pinned:
        builds.append(("large_np1_cpu1", "large", 1, 1))
        if cpus > 2:  # on exactly 2 CPUs, num_proc=2 on 2 CPUs is the large_np2 build itself
            builds.append(("large_np2_cpu2", "large", 2, 2))
    for label, corpus, num_proc, cpu_count in builds:
        runs[label] = prepare_child(ctx.root / "corpus" / corpus, tok, ctx.path("corpus-cache", label), num_proc,
                                    cpu_count)
    if pinned and cpus == 2:
        runs["large_np2_cpu2"] = runs["large_np2"]
    growth = (runs["large_np1"]["peak_rss"] - runs["small_np1"]["peak_rss"]) / (large - small)
    res.ratios.append(Ratio(
        "corpus.rss_growth_per_corpus_byte", growth,
        f"peak RSS {runs['large_np1']['peak_rss'] / 2**20:,.0f} MB on {large / 1e6:,.0f} MB of text",
        f"peak RSS {runs['small_np1']['peak_rss'] / 2**20:,.0f} MB on {small / 1e6:,.0f} MB of text", "<= 0.05"))
    one, two = runs["large_np1"], runs["large_np2"]
    res.ratios.append(Ratio(
        "corpus.num_proc2_vs_num_proc1", one["seconds"] / two["seconds"],
        f"num_proc=2 {two['tokens'] / two['seconds']:,.0f} tok/s",
        f"num_proc=1 {one['tokens'] / one['seconds']:,.0f} tok/s", ">= 1.6",
        note=f"{cpus} CPUs, load {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""))
    one, two = runs.get("large_np1_cpu1"), runs.get("large_np2_cpu2")
    res.ratios.append(Ratio(
        "corpus.num_proc2_on_2_cpus_vs_num_proc1_on_1", one["seconds"] / two["seconds"] if two else None,
        f"num_proc=2 on 2 CPUs {two['tokens'] / two['seconds']:,.0f} tok/s" if two else "needs 2 CPUs",
        f"num_proc=1 on 1 CPU {one['tokens'] / one['seconds']:,.0f} tok/s" if one else "needs 2 CPUs", ">= 1.6",
        note="the pool's scaling per CPU given (ideal 2.0)"))
    res.details = {"bytes": {"small": small, "large": large}, "shards": SHARDS, "runs": runs,
                   "tokens_per_s": {k: v["tokens"] / v["seconds"] for k, v in runs.items()}}
    return res


# -- a whole short run under /usr/bin/time -v -------------------------------------------------------------------


def train_peak_rss(corpus: Path, replay: Path, work: Path, *, max_train_bytes: int, cache: Path | None = None) -> dict:
    """Peak RSS and wall time of `cptlab.cli.train_app` on `corpus` (new) + `replay`, one training step; `cache`:
    the token caches' directory (default: work/cache)."""
    run_dir, cache = work / "run", cache or work / "cache"
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "cptlab.cli.train_app", "data=files",
           f"data.domains.new.sources=[{corpus}]", f"data.domains.old.sources=[{replay}]",
           "tokenizer=train", "tokenizer.vocab_size=2000", f"tokenizer.max_train_bytes={max_train_bytes}",
           "trainer.max_steps=1", "data.seq_len=64", "data.batch_size=4", "eval.max_blocks=4", "logger=csv",
           f"paths.cache_dir={cache}", f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "CPTLAB_RUNS": str(work / "runs"), "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, check=False)
    seconds = time.perf_counter() - t0
    found = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    if proc.returncode or not found:
        raise RuntimeError(f"cptlab.cli.train_app failed ({proc.returncode}): {proc.stderr.strip()[-3000:]}")
    return {"peak_rss": int(found.group(1)) * 1024, "seconds": seconds}


def _train(args) -> None:
    work = Path(args.workdir)
    large_bytes = args.corpus_bytes
    small = generate_corpus(work / "small", large_bytes // 10)
    large = generate_corpus(work / "large", large_bytes)
    replay = generate_corpus(work / "replay", 2_000_000, shards=1, seed=1)
    out = {}
    for label, corpus, size in (("small", "small", small), ("large", "large", large)):
        # Twice per size: the first run builds the token caches (cold), the second trains on them (warm), as every
        # job of a sweep after the first does; each in a run directory of its own.
        cache = work / f"cache-{label}"
        cold, warm = (train_peak_rss(work / corpus, work / "replay", work / f"run-{label}-{kind}", cache=cache,
                                     max_train_bytes=args.max_train_bytes) for kind in ("cold", "warm"))
        out[label] = {"bytes": size, "cold": cold, "warm": warm}
        print(json.dumps({label: out[label]}), flush=True)
    out["replay_bytes"] = replay
    for kind in ("cold", "warm"):
        out[f"rss_growth_per_corpus_byte_{kind}"] = (
            (out["large"][kind]["peak_rss"] - out["small"][kind]["peak_rss"]) / (large - small))
    print(json.dumps(out))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.corpus", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    prep = commands.add_parser("prepare", help="one cache build (the child process of the corpus benchmark)")
    prep.add_argument("--corpus", required=True)
    prep.add_argument("--tokenizer", required=True)
    prep.add_argument("--cache", required=True)
    prep.add_argument("--num-proc", type=int, default=1)
    prep.add_argument("--cpus", type=int, default=None, help="run on the first N allowed CPUs only")
    train = commands.add_parser("train", help="peak RSS of a one-step cptlab.cli.train_app run at N/10 and N corpus bytes")
    train.add_argument("--corpus-bytes", type=int, default=300_000_000)
    train.add_argument("--max-train-bytes", type=int, default=8_000_000)
    train.add_argument("--workdir", required=True)
    args = parser.parse_args(argv)
    _prepare(args) if args.command == "prepare" else _train(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""3. Loader: batches/s the mixture stream delivers vs what training consumes, and resident memory vs corpus size.

Throughput: the training benchmark's MixtureSampler (same domains, batch size, sequence length, replay ratio)
behind `CPTDataModule.train_dataloader()` (the DataLoader Lightning iterates, with the run's
`data.num_workers`), iterated in this process; compared with the training steps/s measured by the training
benchmark in the same invocation.

Memory: two synthetic corpora (two domains, a `new` and a `replay` one, random uint16 ids in `train.bin` /
`val.bin` laid out like a token cache) of N and 10N tokens; each is streamed for `loader_batches` batches
in a fresh process, which reports its resident memory (total, anonymous, file-backed) after imports, after
building sampler + loader and a few batches, and after the stream. Memory that tracks the corpus shows as
growth of anonymous memory per added corpus byte; mapped file pages (the memmap) are page cache, shared
and reclaimable, reported separately.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

from benchmarks.common import ROOT, BenchResult, Context, Ratio, rss_bytes

MB = 1 << 20


def _loader(sampler, num_workers: int = 0):
    """The DataLoader cptlab's datamodule gives Lightning, for a trainer at step 0 of a 1-process run."""
    from cptlab.data.datamodule import CPTDataModule

    dm = CPTDataModule(sampler, num_workers=num_workers)
    dm.trainer = SimpleNamespace(lightning_module=SimpleNamespace(batches_done=0), global_rank=0, world_size=1)
    return dm.train_dataloader()


def _stream_rate(loader, batches: int, warmup: int = 10) -> float:
    it = iter(loader)
    for _ in range(warmup):
        next(it)
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches / (time.perf_counter() - t0)


def write_corpus(root: Path, tokens_per_domain: int, seed: int = 0, vocab: int = 4096) -> list[dict]:
    """Two token-cache-like directories of random ids; returns DomainTokens fields for each."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = []
    for name, role in (("new", "new"), ("old", "replay")):
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        n_val = max(1024, tokens_per_domain // 100)
        for split, n in (("train", tokens_per_domain), ("val", n_val)):
            with open(d / f"{split}.bin", "wb") as f:
                left = n
                while left:
                    k = min(left, 8_000_000)
                    rng.integers(0, vocab, size=k, dtype=np.uint16).tofile(f)
                    left -= k
        out.append({"name": name, "role": role, "weight": 1.0, "dir": str(d), "dtype": "uint16",
                    "n_train_tokens": tokens_per_domain, "n_val_tokens": n_val, "n_train_docs": 1,
                    "n_val_docs": 1, "val_bytes": n_val, "eos_id": 2})
    return out


def rss_child(spec: dict) -> dict:
    """In a fresh process: stream `batches` batches of a synthetic corpus, report resident memory."""
    import torch

    import cptlab.data.datamodule  # noqa: F401  (imports pytorch_lightning: before the first reading)
    from cptlab.data.mixture import MixtureSampler
    from cptlab.data.tokens import DomainTokens

    torch.set_num_threads(1)
    after_import = rss_bytes()
    domains = [DomainTokens(**{**d, "dir": Path(d["dir"])}) for d in spec["domains"]]
    sampler = MixtureSampler(domains, replay_ratio=spec["replay_ratio"], batch_size=spec["batch_size"],
                             seq_len=spec["seq_len"], seed=0)
    it = iter(_loader(sampler, spec["num_workers"]))
    for _ in range(10):
        next(it)
    after_setup = rss_bytes()
    peak = dict(after_setup)
    t0 = time.perf_counter()
    for i in range(spec["batches"]):
        next(it)
        if i % 100 == 0:
            now = rss_bytes()
            peak = {k: max(peak[k], now[k]) for k in peak}
    seconds = time.perf_counter() - t0
    end = rss_bytes()
    peak = {k: max(peak[k], end[k]) for k in peak}
    return {"after_import": after_import, "after_setup": after_setup, "end": end, "peak": peak,
            "batches_per_s": spec["batches"] / seconds}


def _run_children(specs: dict[str, dict]) -> dict[str, dict]:
    """Each spec streamed in its own fresh process, all at once (resident memory is per process)."""
    procs = {label: subprocess.Popen([sys.executable, "-m", "benchmarks.loader", json.dumps(spec)], cwd=ROOT,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for label, spec in specs.items()}
    out = {}
    for label, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=600)
        if proc.returncode:
            raise RuntimeError(f"loader memory child ({label}) failed: {stderr.strip().splitlines()[-1:]}")
        out[label] = json.loads(stdout.strip().splitlines()[-1])
    return out


def run(ctx: Context) -> BenchResult:
    import torch

    from benchmarks import training
    from cptlab.data.mixture import MixtureSampler

    s = ctx.sizes
    res = BenchResult("loader")
    setup = training.setup_for(ctx)
    d = setup.cfg.data
    torch.set_num_threads(s.threads)
    sampler = MixtureSampler(setup.domains, replay_ratio=d.replay_ratio, batch_size=d.batch_size,
                             seq_len=d.seq_len, seed=setup.cfg.seed)
    rate = max(_stream_rate(_loader(sampler, d.num_workers), s.loader_batches) for _ in range(2))
    train_rate = ctx.measured.get("train_steps_per_s")
    res.details["stream"] = {"batches_per_s": rate, "batch_size": d.batch_size, "seq_len": d.seq_len,
                             "num_workers": d.num_workers, "train_steps_per_s": train_rate,
                             "ms_per_batch": 1e3 / rate}
    res.ratios.append(Ratio(
        "loader.batches_per_s_vs_train_steps_per_s", rate / train_rate if train_rate else None,
        f"loader {rate:,.0f} batches/s", f"training {train_rate:,.2f} steps/s" if train_rate else
        "training not run", ">= 50"))

    # resident memory while streaming a corpus of N and 10N tokens
    specs, corpus_bytes = {}, {}
    for label, n in (("N", s.rss_tokens), ("10N", 10 * s.rss_tokens)):
        domains = write_corpus(ctx.path("loader_corpus", label), n)
        corpus_bytes[label] = sum((Path(x["dir"]) / f).stat().st_size for x in domains
                                  for f in ("train.bin", "val.bin"))
        specs[label] = {"domains": domains, "replay_ratio": d.replay_ratio, "batch_size": d.batch_size,
                        "seq_len": d.seq_len, "num_workers": 0, "batches": s.loader_batches}
    try:
        mem = _run_children(specs)
    finally:
        shutil.rmtree(ctx.root / "loader_corpus", ignore_errors=True)
    for label in mem:
        mem[label]["corpus_bytes"] = corpus_bytes[label]
    added = mem["10N"]["corpus_bytes"] - mem["N"]["corpus_bytes"]

    def grew(label, kind, since="after_import"):
        return mem[label]["end"][kind] - mem[label][since][kind]

    anon_growth = (grew("10N", "anon") - grew("N", "anon")) / added
    res.details["memory"] = {
        label: {"corpus_MB": m["corpus_bytes"] / MB,
                **{f"{kind}_MB_{when}": m[when][kind] / MB for kind in ("rss", "anon", "file")
                   for when in ("after_import", "after_setup", "end", "peak")},
                "anon_MB_growth_while_streaming": grew(label, "anon", "after_setup") / MB,
                "rss_MB_growth_while_streaming": grew(label, "rss", "after_setup") / MB,
                "batches_per_s": m["batches_per_s"]}
        for label, m in mem.items()
    }
    res.details["memory"]["batches_streamed"] = s.loader_batches
    res.ratios.append(Ratio(
        "loader.rss_anon_growth_per_corpus_byte", anon_growth,
        f"anon RSS +{grew('10N', 'anon') / MB:,.1f} MB at 10N vs +{grew('N', 'anon') / MB:,.1f} MB at N",
        f"corpus +{added / MB:,.0f} MB", "<= 0.05",
        note="total RSS incl. mapped pages: "
             f"{mem['N']['end']['rss'] / MB:,.0f} MB -> {mem['10N']['end']['rss'] / MB:,.0f} MB"))
    return res


if __name__ == "__main__":
    print(json.dumps(rss_child(json.loads(sys.argv[1]))))

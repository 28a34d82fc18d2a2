"""What the benchmarks share: sizes (full / quick), a scratch workspace, the base and extended tokenizers,
the demo corpora split as a run splits them, timing and memory helpers, and the result records."""

from __future__ import annotations

import functools
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# The repository root: `python -m benchmarks.<name>` child processes run from it (benchmarks/ is not installed).
ROOT = Path(__file__).resolve().parents[1]
# The demo_zh experiment's domains (conf/data/demo_zh.yaml): the held-out shares and seed a run uses.
EN_HELDOUT, ZH_HELDOUT, SEED = 0.03, 0.02, 0


@dataclass(frozen=True)
class Sizes:
    """Everything that makes a full run take ~10-15 minutes on 2 cores and a quick one under a minute."""

    quick: bool
    threads: int
    # corpora: documents of each demo corpus used (None: all)
    en_docs: int | None
    zh_docs: int | None
    # tokenizers (the base is 4096 in both modes: the corpus caps it in quick mode)
    base_vocab: int = 4096
    ext_vocab: int = 4000
    # demo:zh has ~5,500 distinct characters: at SentencePiece's default coverage (0.9995) a 4000-piece domain
    # vocabulary cannot hold the ~4,700 it must keep, so the extension uses 0.998 (~3,500 kept characters).
    ext_coverage: float = 0.998
    # 1. training
    hidden: int = 256
    intermediate: int = 688
    layers: int = 4
    heads: int = 4
    seq_len: int = 256
    batch_size: int = 4
    train_steps: int = 30  # timed steps of each side
    warmup_steps: int = 4  # steps 1..4 of each side are not timed
    train_docs: int | None = 3000  # documents per domain tokenized for the training stream
    peak_n: int = 2048  # matmul size for the peak
    profile_steps: int = 4
    # 2. pre-tokenization
    pretok_docs: int | None = None
    pretok_procs: tuple[int, ...] = (1, 2)
    # 3. loader
    loader_batches: int = 1000
    rss_tokens: int = 8_000_000  # tokens per domain at size N (two domains); 10N for the large corpus
    # 4. tokenizer encode speed: characters of text per timed call
    encode_chars: int = 1_000_000
    # 5. start-up
    startup_overrides: tuple[str, ...] = ()
    # quick: the smoke job reads small local .txt slices of the corpora (data=files) instead of demo:zh / demo:en,
    # whose reading (demo:en parses the standard library) would dominate a quick run
    startup_local_files: bool = False
    # 6. corpus scale: text bytes of the large generated corpus (the small one is a tenth of it)
    corpus_bytes: int = 1_000_000_000

    @classmethod
    def make(cls, quick: bool, threads: int | None = None, corpus_bytes: int | None = None) -> "Sizes":
        threads = threads or default_threads()
        if not quick:
            return cls(quick=False, threads=threads, en_docs=None, zh_docs=None,
                       corpus_bytes=corpus_bytes or cls.corpus_bytes)
        return cls(corpus_bytes=corpus_bytes or 4_000_000,
            quick=True, threads=threads, en_docs=400, zh_docs=1500, hidden=64, intermediate=176, layers=2,
            heads=4, seq_len=64, batch_size=4, train_steps=6, warmup_steps=2, train_docs=300,
            peak_n=512, profile_steps=0, pretok_docs=300, pretok_procs=(1, 2), loader_batches=200,
            rss_tokens=200_000, encode_chars=100_000,
            startup_overrides=("trainer.max_steps=2", "eval.max_blocks=1", "eval.every_n_steps=2",
                               "checkpoint.every_n_steps=2"),
            startup_local_files=True,
        )


def default_threads() -> int:
    import torch

    return torch.get_num_threads()


# -- results ------------------------------------------------------------------------------------------------


@dataclass
class Ratio:
    """One headline number: `value` = measured / baseline (both measured in this invocation)."""

    key: str
    value: float | None
    measured: str  # what the numerator is, with its value and unit
    baseline: str  # what the denominator is, with its value and unit
    target: str | None = None  # ">= 1.0", "<= 0.01", "== 1.0" or None (informational)
    note: str = ""

    @property
    def met(self) -> bool | None:
        if self.target is None or self.value is None:
            return None
        op, bound = self.target.split()
        bound = float(bound)
        return {">=": self.value >= bound, "<=": self.value <= bound,
                "==": abs(self.value - bound) <= 1e-9 * max(1.0, abs(bound))}[op]

    def as_dict(self) -> dict:
        return {**asdict(self), "met": self.met}


@dataclass
class BenchResult:
    name: str
    ratios: list[Ratio] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    error: str | None = None


# -- workspace and shared artefacts ---------------------------------------------------------------------------


class Context:
    """A scratch workspace and the artefacts several benchmarks use, built once per invocation."""

    def __init__(self, sizes: Sizes, root: Path | None = None):
        self.sizes = sizes
        self._own_root = root is None
        self.root = Path(root) if root else Path(tempfile.mkdtemp(prefix="cptlab-bench-"))
        self.root.mkdir(parents=True, exist_ok=True)
        self.cache = self.root / "cache"
        self.measured: dict[str, Any] = {}  # numbers one benchmark hands to another (training steps/s)
        self.shared: dict[str, Any] = {}  # objects several benchmarks use (the training setup)

    def path(self, *parts: str) -> Path:
        p = self.root.joinpath(*parts)
        p.mkdir(parents=True, exist_ok=True)
        return p

    def close(self, keep: bool = False) -> None:
        if self._own_root and not keep:
            shutil.rmtree(self.root, ignore_errors=True)

    # corpora, split as a run splits them (cptlab.data.tokens.load_domain_documents)
    @functools.cached_property
    def en_split(self) -> tuple[list[str], list[str]]:
        return self._split("en", "demo:en", EN_HELDOUT, self.sizes.en_docs)

    @functools.cached_property
    def zh_split(self) -> tuple[list[str], list[str]]:
        return self._split("zh", "demo:zh", ZH_HELDOUT, self.sizes.zh_docs)

    def _split(self, name: str, source: str, heldout: float, max_docs: int | None):
        from cptlab.data.tokens import DomainSpec, load_domain_documents

        spec = DomainSpec(name=name, role="new", sources=(source,), heldout=heldout, max_docs=max_docs)
        train, val, _ = load_domain_documents(spec, seed=SEED)
        return train, val

    @functools.cached_property
    def base_tokenizer_dir(self) -> Path:
        """The base: a byte-fallback BPE SentencePiece model trained on the demo:en train split, exported to HF."""
        from cptlab.tokenizer.hf import export_hf_tokenizer
        from cptlab.tokenizer.spm import train_spm

        out = self.path("tokenizers", "base")
        t0 = time.perf_counter()
        model = train_spm(self.en_split[0], out, vocab_size=self.sizes.base_vocab, seed=SEED)
        self.measured["base_spm_train_s"] = time.perf_counter() - t0
        export_hf_tokenizer(model, out)
        return out

    @functools.cached_property
    def ext_tokenizer_dir(self) -> Path:
        """The base extended with a 4000-piece vocabulary trained on the demo:zh train split (kind=extend)."""
        from cptlab.tokenizer.prepare import prepare_tokenizer

        zh_train, en_train = self.zh_split[0], self.en_split[0]
        t0 = time.perf_counter()
        out = prepare_tokenizer("extend", self.root / "tokenizers" / "extended", cache_root=self.cache,
                                source=str(self.base_tokenizer_dir / "tokenizer.model"), texts=lambda: zh_train,
                                base_texts=lambda: en_train, vocab_size=self.sizes.ext_vocab,
                                character_coverage=self.sizes.ext_coverage, seed=SEED)
        self.measured["extend_s"] = time.perf_counter() - t0
        return out


# -- measuring ----------------------------------------------------------------------------------------------


def median(xs):
    return statistics.median(xs) if xs else None


def peak_rss() -> int:
    """This process's own peak resident memory so far (VmHWM), bytes. Not `ru_maxrss`: Linux carries the
    parent's peak into a child across fork + exec, so a child started by a bigger parent reports the parent's."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux; no /proc elsewhere


def rss_bytes() -> dict[str, int]:
    """Resident memory of this process: total, anonymous (heap) and file-backed (mapped files) bytes."""
    try:
        fields = {}
        with open("/proc/self/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
                    fields[key] = int(rest.split()[0]) * 1024
        return {"rss": fields["VmRSS"], "anon": fields.get("RssAnon", fields["VmRSS"]),
                "file": fields.get("RssFile", 0)}
    except (OSError, KeyError, ValueError):
        import psutil

        info = psutil.Process().memory_info()
        return {"rss": info.rss, "anon": info.rss - getattr(info, "shared", 0), "file": getattr(info, "shared", 0)}


def matmul_peak(n: int, threads: int, seconds: float = 2.0) -> float:
    """fp32 FLOP/s of a large square torch.mm with `threads` threads: the best of several short timed loops."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(n, n), torch.randn(n, n)
        out = torch.empty(n, n)
        torch.mm(a, b, out=out)
        best, deadline = float("inf"), time.perf_counter() + seconds
        reps = max(1, int(2e9 / (2 * n**3)))
        while True:
            t0 = time.perf_counter()
            for _ in range(reps):
                torch.mm(a, b, out=out)
            best = min(best, (time.perf_counter() - t0) / reps)
            if time.perf_counter() > deadline:
                break
        return 2 * n**3 / best
    finally:
        torch.set_num_threads(old)


def environment() -> dict:
    import platform

    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "machine": platform.machine(), "cpu": _cpu_name()}
    try:
        info["loadavg_1m_at_start"] = os.getloadavg()[0]
    except OSError:
        pass
    for mod in ("transformers", "pytorch_lightning", "tokenizers", "sentencepiece"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - only a label
            pass
    return info


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor()

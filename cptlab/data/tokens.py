"""Per-domain token caches: documents -> train/held-out split -> flat memory-mapped `train.bin` / `val.bin`, keyed
by everything that determines their content, built once under a lock, and validated on every use."""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import logging
import math
import multiprocessing
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cptlab.data.sources import BAD_TEXT_POLICIES, read_documents_with_stats, resolve_source, source_fingerprint
from cptlab.data.split import documents_sha256, heldout_kind, split_documents
from cptlab.errors import CptlabError
from cptlab.utils.hashing import hash_dir, hash_file, hash_obj
from cptlab.utils.io import COMPLETE_MARKER, atomic_write_json, build_once, is_complete

log = logging.getLogger(__name__)

FORMAT_VERSION = 3  # 2: meta.json records the held-out documents' hash (heldout_sha256); 3: unigram_counts.npy
ROLES = ("new", "replay")
UNIGRAM_FILE = "unigram_counts.npy"  # train-split token counts, beside train.bin
_BATCH_DOCS = 1000  # documents per tokenizer call: large enough for the Rust batch encoder, small enough for memory


@dataclass(frozen=True)
class DomainSpec:
    name: str  # "en", "zh", "code", ...
    role: str  # "new" or "replay"
    sources: tuple[str, ...]
    heldout: float = 0.02  # share in (0, 1) or integer count of held-out documents
    weight: float = 1.0  # relative weight among domains of the same role
    max_docs: int | None = None  # keep only the first N documents (after reading, before the split): smoke runs
    text_field: str = "text"


@dataclass(frozen=True)
class DomainTokens:
    name: str
    role: str
    weight: float
    dir: Path  # the cache directory
    dtype: str  # "uint16" or "uint32"
    n_train_tokens: int
    n_val_tokens: int
    n_train_docs: int
    n_val_docs: int
    val_bytes: int  # UTF-8 bytes of the held-out documents (for bits-per-byte)
    eos_id: int
    stats: dict = field(default_factory=dict, compare=False)  # bad_text_replaced / bad_text_skipped / docs_read ...
    heldout_sha256: str | None = None  # which held-out documents (cptlab.data.split.documents_sha256)

    def train_tokens(self) -> np.memmap:
        return np.memmap(self.dir / "train.bin", dtype=self.dtype, mode="r", shape=(self.n_train_tokens,))

    def val_tokens(self) -> np.memmap:
        return np.memmap(self.dir / "val.bin", dtype=self.dtype, mode="r", shape=(self.n_val_tokens,))

    def unigram_counts(self) -> np.ndarray:
        """How often each token id occurs in the train split (int64, one entry per vocabulary id), counted when
        the cache was built: the unigram baseline never reads the train array again."""
        return np.load(self.dir / UNIGRAM_FILE)


def token_dtype(vocab_size: int) -> str:
    """The smallest unsigned dtype that holds every token id of a vocabulary of `vocab_size` entries."""
    return "uint16" if vocab_size <= 65535 else "uint32"


def _check_spec(spec: DomainSpec, on_bad_text: str) -> None:
    """Reject a bad domain config before any source is read."""
    key = f"data.domains.{spec.name}"
    if not isinstance(spec.name, str) or not spec.name or "/" in spec.name or spec.name.startswith("."):
        raise CptlabError(f"data.domains: invalid domain name {spec.name!r} (it names a cache directory)")
    if spec.role not in ROLES:
        raise CptlabError(f"{key}.role must be 'new' or 'replay', got {spec.role!r}")
    if not _sources(spec):
        raise CptlabError(f"{key}.sources is empty: give at least one data source")
    weight_ok = isinstance(spec.weight, (int, float)) and not isinstance(spec.weight, bool)
    if not weight_ok or not math.isfinite(spec.weight) or spec.weight < 0:
        raise CptlabError(f"{key}.weight must be a number >= 0, got {spec.weight!r}")
    max_docs_ok = isinstance(spec.max_docs, int) and not isinstance(spec.max_docs, bool) and spec.max_docs >= 1
    if spec.max_docs is not None and not max_docs_ok:
        raise CptlabError(f"{key}.max_docs must be null or an integer >= 1, got {spec.max_docs!r}")
    try:
        heldout_kind(spec.heldout)
    except CptlabError as e:
        raise CptlabError(f"{key}.heldout: {e}") from None
    if on_bad_text not in BAD_TEXT_POLICIES:
        raise CptlabError(f"data.on_bad_text must be one of {', '.join(BAD_TEXT_POLICIES)}, got {on_bad_text!r}")


def _sources(spec: DomainSpec) -> tuple[str, ...]:
    # A bare string (one source written without a list in the config) must not be iterated character by character.
    return (spec.sources,) if isinstance(spec.sources, str) else tuple(spec.sources)


def load_domain_documents(
    spec: DomainSpec, *, on_bad_text: str = "replace", seed: int = 0
) -> tuple[list[str], list[str], dict]:
    """(train documents, held-out documents, stats) of a domain: every source read, `max_docs` applied, split.
    `seed` keys the split only (a run passes data.split_seed, never its training seed)."""
    _check_spec(spec, on_bad_text)
    sources = _sources(spec)
    for source in sources:  # every missing path or bad form is reported before any source is read
        resolve_source(source)
    docs: list[str] = []
    stats = {"bad_text_replaced": 0, "bad_text_skipped": 0}
    for source in sources:
        source_docs, source_stats = read_documents_with_stats(
            source, text_field=spec.text_field, on_bad_text=on_bad_text
        )
        docs.extend(source_docs)
        for k, v in source_stats.items():
            stats[k] = stats.get(k, 0) + v
    stats["docs_read"] = len(docs)
    if spec.max_docs is not None:
        docs = docs[: spec.max_docs]
    try:
        train, val = split_documents(docs, spec.heldout, seed)
    except CptlabError as e:
        raise CptlabError(f"data.domains.{spec.name}.heldout: {e}") from None
    return train, val, stats


def documents_key(spec: DomainSpec, *, seed: int, on_bad_text: str) -> dict:
    """What determines a domain's train/held-out documents, without reading them: its sources' fingerprints
    (path, size, mtime of local files), text field, cap, split and bad-text policy."""
    return {
        "sources": [{"source": s, "fingerprint": source_fingerprint(s)} for s in _sources(spec)],
        "text_field": spec.text_field,
        "heldout": spec.heldout,
        "max_docs": spec.max_docs,
        "seed": seed,
        "on_bad_text": on_bad_text,
    }


def cache_key_inputs(spec: DomainSpec, tokenizer_dir: Path, *, seed: int, on_bad_text: str) -> dict:
    """Everything that determines a domain's token arrays (but not its role or weight, which only the sampler uses)."""
    return {"format": FORMAT_VERSION, **documents_key(spec, seed=seed, on_bad_text=on_bad_text),
            "tokenizer": hash_dir(tokenizer_dir)}


def prepare_domain(
    spec: DomainSpec,
    tokenizer_dir: Path,
    cache_root: Path,
    *,
    seed: int = 0,
    num_proc: int = 1,
    on_bad_text: str = "replace",
    progress: bool = False,
) -> DomainTokens:
    """Tokenize a domain into `cache_root/tokens/<name>-<key>/` (or reuse a valid cache) and describe it."""
    _check_spec(spec, on_bad_text)
    tokenizer_dir = Path(tokenizer_dir)
    if not tokenizer_dir.is_dir():
        raise CptlabError(f"tokenizer directory not found: {tokenizer_dir}")
    if isinstance(num_proc, bool) or not isinstance(num_proc, int) or num_proc < 1:
        raise CptlabError(f"num_proc must be an integer >= 1, got {num_proc!r}")
    inputs = cache_key_inputs(spec, tokenizer_dir, seed=seed, on_bad_text=on_bad_text)
    key = hash_obj(inputs)
    final = Path(cache_root) / "tokens" / f"{spec.name}-{key}"

    meta = _valid_meta(final, key)
    if meta is None:
        if is_complete(final):
            _discard_damaged(final, key)
        build = functools.partial(
            _build, spec, tokenizer_dir, key=key, inputs=inputs, seed=seed, num_proc=num_proc,
            on_bad_text=on_bad_text, progress=progress,
        )  # fmt: skip
        build_once(final, build)
        meta = _valid_meta(final, key)
        if meta is None:
            raise CptlabError(f"token cache {final} is invalid right after it was built; delete it and retry")
    else:
        log.info("reusing token cache %s", final)
    counts = {
        k: meta[k] for k in ("n_train_tokens", "n_val_tokens", "n_train_docs", "n_val_docs", "val_bytes")
    }
    return DomainTokens(
        name=spec.name, role=spec.role, weight=float(spec.weight), dir=final, dtype=meta["dtype"],
        eos_id=meta["eos_id"], stats=meta["stats"], heldout_sha256=meta["heldout_sha256"], **counts,
    )  # fmt: skip


def _valid_meta(directory: Path, key: str) -> dict | None:
    """The cache's meta if the directory is complete and its arrays have the recorded sizes, else None."""
    if not is_complete(directory):
        return None
    try:
        meta = json.loads((directory / "meta.json").read_text(encoding="utf-8"))
        if meta["format"] != FORMAT_VERSION or meta["key"] != key:
            return None
        itemsize = np.dtype(meta["dtype"]).itemsize
        for split in ("train", "val"):
            if (directory / f"{split}.bin").stat().st_size != int(meta[f"n_{split}_tokens"]) * itemsize:
                return None
        counts = np.load(directory / UNIGRAM_FILE, mmap_mode="r")
        if counts.shape != (int(meta["vocab_size"]),) or int(counts.sum()) != int(meta["n_train_tokens"]):
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return meta


def _discard_damaged(final: Path, key: str) -> None:
    """Un-complete a damaged cache under the build lock so that `build_once` rebuilds it (never use a bad cache)."""
    from filelock import FileLock

    with FileLock(str(final) + ".lock"):
        # Another process may have rebuilt it while we waited for the lock.
        if is_complete(final) and _valid_meta(final, key) is None:
            log.warning("token cache %s is damaged (truncated array or unreadable meta.json); rebuilding it", final)
            (final / COMPLETE_MARKER).unlink(missing_ok=True)


def load_tokenizer(tokenizer_dir: Path):
    """The Hugging Face tokenizer of `tokenizer_dir`; it must define an EOS token (documents are EOS-separated)."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    except Exception as e:  # transformers raises OSError/ValueError/... for a broken directory
        raise CptlabError(
            f"{tokenizer_dir}: cannot load the tokenizer ({type(e).__name__}: {' '.join(str(e).split())[:200]})"
        ) from None
    if tok.eos_token_id is None:
        raise CptlabError(
            f"{tokenizer_dir}: the tokenizer has no eos_token; documents are separated by EOS, so one is required"
        )
    return tok


def vocab_size_of(tok) -> int:
    # len(tok) counts added tokens; the largest id guards against vocabularies with holes.
    return max(len(tok), max(tok.get_vocab().values(), default=-1) + 1)


def encode_documents(tok, docs: list[str], eos_id: int, dtype: str) -> np.ndarray:
    """The ids of every document, each followed by `eos_id`, as one flat array (no BOS, no special tokens)."""
    backend = getattr(tok, "backend_tokenizer", None) if getattr(tok, "is_fast", False) else None
    if backend is not None:
        # The Rust tokenizer directly: the same ids as tok(docs) without the offsets and BatchEncoding
        # transformers builds around them (~1.6x faster cache builds; benchmarks/README.md).
        ids = [e.ids for e in backend.encode_batch_fast(docs, add_special_tokens=False)]
    else:
        ids = tok(docs, add_special_tokens=False, return_attention_mask=False, verbose=False)["input_ids"]
    for doc_ids in ids:  # the lists are ours: appending is cheaper than interleaving EOS afterwards
        doc_ids.append(eos_id)
    flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64, count=sum(map(len, ids)))
    if flat.max() > np.iinfo(dtype).max:
        raise CptlabError(f"token id {int(flat.max())} does not fit the cache dtype {dtype}")
    return flat.astype(dtype)


# Per-worker state of the encoding pool, set once by the initializer (spawned workers share nothing).
_WORKER: tuple | None = None


def _worker_init(tokenizer_dir: str, dtype: str) -> None:
    # The pool's processes already occupy the cores; Rust-level threads on top would oversubscribe them.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    global _WORKER
    tok = load_tokenizer(Path(tokenizer_dir))
    _WORKER = (tok, tok.eos_token_id, dtype)


def _worker_encode(docs: list[str]) -> np.ndarray:
    tok, eos_id, dtype = _WORKER
    return encode_documents(tok, docs, eos_id, dtype)


def _build(spec, tokenizer_dir, out: Path, *, key, inputs, seed, num_proc, on_bad_text, progress) -> None:
    tok = load_tokenizer(tokenizer_dir)  # before reading: a bad tokenizer fails before the expensive part
    eos_id = int(tok.eos_token_id)
    vocab_size = vocab_size_of(tok)
    dtype = token_dtype(vocab_size)
    train, val, stats = load_domain_documents(spec, on_bad_text=on_bad_text, seed=seed)
    n_docs = len(train) + len(val)
    # One process encodes in large batches; a pool gets several chunks per worker so that none idles at the end.
    chunk = _BATCH_DOCS if num_proc == 1 else max(1, min(_BATCH_DOCS, math.ceil(n_docs / (8 * num_proc))))
    show = progress and sys.stderr.isatty() and os.environ.get("CI") != "true"
    with contextlib.ExitStack() as stack:
        if num_proc > 1:
            # spawn, not fork: a forked child would inherit the parent's (possibly running) Rust thread pool.
            pool = stack.enter_context(
                multiprocessing.get_context("spawn").Pool(
                    num_proc, initializer=_worker_init, initargs=(str(tokenizer_dir), dtype)
                )
            )
            encode = functools.partial(pool.imap, _worker_encode)  # imap returns results in document order
        else:
            encode = functools.partial(map, functools.partial(encode_documents, tok, eos_id=eos_id, dtype=dtype))
        advance = stack.enter_context(_progress_bar(show, f"tokenizing {spec.name}", n_docs))
        counts = np.zeros(vocab_size, dtype=np.int64)
        n_train = _write_split(out / "train.bin", train, chunk, encode, advance, counts=counts)
        n_val = _write_split(out / "val.bin", val, chunk, encode, advance)
    np.save(out / UNIGRAM_FILE, counts)
    meta = {
        "format": FORMAT_VERSION,
        "key": key,
        "key_inputs": inputs,
        "name": spec.name,
        "tokenizer_dir": str(tokenizer_dir),
        "dtype": dtype,
        "vocab_size": vocab_size,
        "eos_id": eos_id,
        "n_train_tokens": n_train,
        "n_val_tokens": n_val,
        "n_train_docs": len(train),
        "n_val_docs": len(val),
        "val_bytes": sum(len(d.encode("utf-8", errors="surrogatepass")) for d in val),
        "train_hash": hash_file(out / "train.bin"),
        "val_hash": hash_file(out / "val.bin"),
        "heldout_sha256": documents_sha256(val),
        "stats": stats,
    }
    atomic_write_json(out / "meta.json", meta)


def _write_split(path: Path, docs: list[str], chunk: int, encode, advance, counts: np.ndarray | None = None) -> int:
    """Encode `docs` chunk by chunk, appending to `path` in document order; returns the token count.
    `counts` (one entry per vocabulary id) is incremented by each chunk's token counts."""
    chunks = [docs[i : i + chunk] for i in range(0, len(docs), chunk)]
    n_tokens = 0
    with open(path, "wb") as f:
        for docs_chunk, ids in zip(chunks, encode(chunks)):
            ids.tofile(f)
            n_tokens += ids.size
            if counts is not None:
                counts += np.bincount(ids, minlength=counts.size)
            advance(len(docs_chunk))
    return n_tokens


@contextlib.contextmanager
def _progress_bar(enabled: bool, description: str, total: int):
    """Yields `advance(n_docs)`: a rich bar with documents/s on an interactive terminal, a no-op otherwise."""
    if not enabled:
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
    from rich.text import Text

    class DocsPerSecond(ProgressColumn):
        def render(self, task) -> Text:
            return Text(f"{task.speed:,.0f} docs/s" if task.speed else "? docs/s")

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        DocsPerSecond(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    ) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)

"""Per-domain token caches: documents -> train/held-out split -> flat memory-mapped `train.bin` / `val.bin`, keyed
by everything that determines their content, built once under a lock, and validated on every use."""

from __future__ import annotations

import array
import contextlib
import functools
import heapq
import itertools
import json
import logging
import multiprocessing
import os
import shutil
import sys
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cptlab.data.sources import (
    MAX_DOC_BYTES,
    SourcePart,
    iter_documents,
    iter_part,
    part_fingerprint,
    resolve_source,
    source_fingerprint,
)
from cptlab.data.split import doc_hash, documents_sha256, heldout_kind, share_threshold
from cptlab.errors import CptlabError
from cptlab.utils.hashing import hash_dir, hash_file, hash_obj
from cptlab.utils.io import COMPLETE_MARKER, atomic_write_json, build_once, is_complete

log = logging.getLogger(__name__)

# 2: meta.json records the held-out documents' hash (heldout_sha256); 3: unigram_counts.npy; 4: heldout.jsonl;
# 5: one shard entry per source file (token_shards/<key>/), the domain's train files hard links to them
# 6: doc_hashes.npy, the split hashes of the documents a shard trains on (the eval-domain overlap check)
FORMAT_VERSION = 6
SHARDS_DIR = "token_shards"  # cache_root/token_shards/<key>/: one source file's train/held-out arrays
UNIGRAM_FILE = "unigram_counts.npy"  # train-split token counts, beside train.bin
HELDOUT_FILE = "heldout.jsonl"  # the held-out documents' text (a JSON string per line), for tokenizer statistics
DOC_HASHES = "doc_hashes.npy"  # a shard's trained-on documents: sorted unique doc_hash values under the split seed
# Documents (or characters) per tokenizer call: large enough for the Rust batch encoder, small enough for memory.
_BATCH_DOCS = 1000
_BATCH_CHARS = 4 << 20


@dataclass(frozen=True)
class DomainSpec:
    name: str  # "en", "zh", "code", ...
    role: str  # "new", "replay" or "eval" (every document held out, none trained on)
    sources: tuple[str, ...]
    heldout: float = 0.02  # share in (0, 1) or integer count of held-out documents
    weight: float = 1.0  # relative weight among domains of the same role
    max_docs: int | None = None  # keep only the first N documents (after reading, before the split): smoke runs
    text_field: str = "text"
    # A longer document is refused (data.max_doc_bytes): it changes no cache's content, so no cache key holds it.
    max_doc_bytes: int | None = MAX_DOC_BYTES
    # ((source, weight), ...) of every source when the domain's rows are split among its sources by weight
    # (cptlab.data.source_weights); () otherwise. Like `weight`, only the sampler reads it: no cache key holds it.
    source_weights: tuple[tuple[str, float], ...] = ()


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
    # The train array's files in order, (file name in `dir`, tokens): one per shard (source file). Empty: the
    # single file train.bin of n_train_tokens tokens.
    train_files: tuple[tuple[str, int], ...] = ()
    # The source (as written in the config) each of train_files came from; empty for a cache built before they
    # were recorded. With source_weights: the sampler's streams (cptlab.data.source_weights).
    train_sources: tuple[str, ...] = ()
    source_weights: tuple[tuple[str, float], ...] = ()

    def train_parts(self) -> list[tuple[Path, int]]:
        """(path, tokens) of each file of the train array; their concatenation is the domain's train stream."""
        return [(self.dir / name, n) for name, n in self.train_files] or [(self.dir / "train.bin", self.n_train_tokens)]

    def train_tokens(self) -> np.ndarray:
        """The train array: a read-only memmap for a one-shard domain, else the shards concatenated in memory (for
        tests and inspection; the sampler reads the shard files directly)."""
        maps = [np.memmap(path, dtype=self.dtype, mode="r", shape=(n,)) for path, n in self.train_parts()]
        if len(maps) == 1:
            return maps[0]
        joined = np.concatenate(maps)
        joined.flags.writeable = False
        return joined

    def val_tokens(self) -> np.memmap:
        return np.memmap(self.dir / "val.bin", dtype=self.dtype, mode="r", shape=(self.n_val_tokens,))

    def unigram_counts(self) -> np.ndarray:
        """How often each token id occurs in the train split (int64, one entry per vocabulary id), counted when
        the cache was built: the unigram baseline never reads the train array again."""
        return np.load(self.dir / UNIGRAM_FILE)

    def train_doc_hashes(self) -> Iterator[np.ndarray]:
        """Per shard, the sorted doc_hash values (split seed) of the documents the domain trains on: hashed while
        the cache was built, so checking an eval domain against them reads no corpus."""
        meta = json.loads((self.dir / "meta.json").read_text(encoding="utf-8"))
        for key in meta["shards"]:
            yield np.load(self.dir.parent.parent / SHARDS_DIR / key / DOC_HASHES, mmap_mode="r")

    def heldout_texts(self, max_docs: int | None = None) -> list[str]:
        """The held-out documents' text, in corpus order (the first `max_docs` of them)."""
        with open(self.dir / HELDOUT_FILE, encoding="utf-8", errors="surrogatepass") as f:
            return [json.loads(line) for line in itertools.islice(f, max_docs)]


def token_dtype(vocab_size: int) -> str:
    """The smallest unsigned dtype that holds every token id of a vocabulary of `vocab_size` entries."""
    return "uint16" if vocab_size <= 65535 else "uint32"


def _check_spec(spec: DomainSpec, on_bad_text: str) -> None:
    """Refuse a domain name that cannot name a cache directory, before any source is read. The spec's values
    (role, weight, max_docs, heldout, on_bad_text) are a validated config's: their rules live beside the
    fields of the schema's DomainConfig / DataConfig, and the held-out share or count is read (and refused
    when it cannot be split) by `heldout_rule`."""
    if not isinstance(spec.name, str) or not spec.name or "/" in spec.name or spec.name.startswith("."):
        raise CptlabError(f"data.domains: invalid domain name {spec.name!r} (it names a cache directory)")


def _sources(spec: DomainSpec) -> tuple[str, ...]:
    # A bare string (one source written without a list in the config) must not be iterated character by character.
    return (spec.sources,) if isinstance(spec.sources, str) else tuple(spec.sources)


def _check_sources(spec: DomainSpec) -> None:
    for source in _sources(spec):  # every missing path or bad form is reported before any source is read
        resolve_source(source)


def domain_documents(spec: DomainSpec, *, on_bad_text: str = "replace", stats: dict | None = None) -> Iterator[str]:
    """Every document of a domain, streamed source after source and cut at `max_docs` (reading stops there).
    `stats` (if given) gains the invalid-UTF-8 counts and "docs_read"."""
    stats = {} if stats is None else stats
    for key in ("bad_text_replaced", "bad_text_skipped", "docs_read"):
        stats.setdefault(key, 0)
    docs = itertools.chain.from_iterable(
        iter_documents(source, text_field=spec.text_field, on_bad_text=on_bad_text, stats=stats,
                       max_doc_bytes=spec.max_doc_bytes)
        for source in _sources(spec)
    )
    for doc in itertools.islice(docs, spec.max_docs):
        stats["docs_read"] += 1
        yield doc


@dataclass(frozen=True)
class HeldoutRule:
    """Which documents of a domain are held out, as a pure function of a document's text (and the split seed):
    the decision needs no list of the corpus, so documents can flow from the source to the token array."""

    seed: int
    threshold: float | None = None  # a share: held out when doc_hash(text, seed) < threshold
    texts: frozenset = frozenset()  # a count (or a share too small to select any document): exactly these texts
    everything: bool = False  # role eval: every document is held out

    def __call__(self, text: str) -> bool:
        if self.everything or text in self.texts:
            return True
        return self.threshold is not None and doc_hash(text, self.seed) < self.threshold


def heldout_rule(spec: DomainSpec, *, seed: int = 0, on_bad_text: str = "replace") -> HeldoutRule:
    """The held-out rule of a domain, the same split as `cptlab.data.split.split_documents` of all its documents.
    A share reads until the first document below its threshold (a few hundred documents: the rule is then the
    threshold itself); only a corpus where no document falls below it, or a count (the `heldout` distinct texts
    with the smallest hashes), is hashed in full, in one streaming pass that keeps `heldout` texts at most.
    An eval-role domain holds out every document (its `heldout` is not read)."""
    if spec.role == "eval":
        return HeldoutRule(seed, everything=True)
    try:
        kind = heldout_kind(spec.heldout)
    except CptlabError as e:
        raise CptlabError(f"data.domains.{spec.name}.heldout: {e}") from None
    if kind == "share":
        threshold = share_threshold(spec.heldout)
        best = None
        for text in domain_documents(spec, on_bad_text=on_bad_text):
            h = doc_hash(text, seed)
            if h < threshold:
                return HeldoutRule(seed, threshold=threshold)
            if best is None or (h, text) < best:
                best = (h, text)
        return HeldoutRule(seed, texts=frozenset({best[1]}))
    count, n_docs, overflow = int(spec.heldout), 0, False
    heap: list[tuple[int, str]] = []  # (-hash, text) of the `count` distinct texts with the smallest hashes so far
    members: set[str] = set()
    for text in domain_documents(spec, on_bad_text=on_bad_text):
        n_docs += 1
        if text in members:
            continue
        h = doc_hash(text, seed)
        if len(heap) < count:
            heapq.heappush(heap, (-h, text))
            members.add(text)
        elif h < -heap[0][0]:
            members.discard(heapq.heapreplace(heap, (-h, text))[1])
            members.add(text)
            overflow = True
        else:
            overflow = True
    if not overflow:  # every distinct text would be held out
        raise CptlabError(
            f"data.domains.{spec.name}.heldout: cannot hold out {count} documents from {n_docs} documents "
            f"({len(heap)} distinct): the training side would be empty; lower heldout"
        )
    return HeldoutRule(seed, texts=frozenset(members))


def _split_error(spec: DomainSpec, n_train: int, n_val: int) -> CptlabError:
    return CptlabError(
        f"data.domains.{spec.name}.heldout: cannot hold out {spec.heldout!r} of {n_train + n_val} documents: the "
        f"{'training' if not n_train else 'held-out'} side would be empty; add documents or change heldout"
    )


def train_documents(
    spec: DomainSpec, *, seed: int = 0, on_bad_text: str = "replace", max_bytes: int | None = None
) -> Iterator[str]:
    """The train-split documents of a domain, streamed in corpus order; with `max_bytes`, only the leading ones
    that fit in that many UTF-8 bytes (at least one document): a bounded sample for tokenizer training."""
    _check_spec(spec, on_bad_text)
    _check_sources(spec)
    if spec.role == "eval":  # nothing of an evaluation-only domain is trained on
        return
    rule = heldout_rule(spec, seed=seed, on_bad_text=on_bad_text)
    used = 0
    for doc in domain_documents(spec, on_bad_text=on_bad_text):
        if rule(doc):
            continue
        if max_bytes is not None:
            size = len(doc.encode("utf-8", errors="surrogatepass"))
            if used and used + size > max_bytes:
                return
            used += size
        yield doc


def load_domain_documents(
    spec: DomainSpec, *, on_bad_text: str = "replace", seed: int = 0
) -> tuple[list[str], list[str], dict]:
    """(train documents, held-out documents, stats) of a domain as lists: every source read, `max_docs` applied,
    split. `seed` keys the split only (a run passes data.split_seed, never its training seed). For small
    corpora and tests: cache builds and tokenizer training stream instead (`domain_documents`, `heldout_rule`)."""
    _check_spec(spec, on_bad_text)
    _check_sources(spec)
    rule = heldout_rule(spec, seed=seed, on_bad_text=on_bad_text)
    stats: dict = {}
    train: list[str] = []
    val: list[str] = []
    for doc in domain_documents(spec, on_bad_text=on_bad_text, stats=stats):
        (val if rule(doc) else train).append(doc)
    if (not train and spec.role != "eval") or not val:
        raise _split_error(spec, len(train), len(val))
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
        **({"role": "eval"} if spec.role == "eval" else {}),  # every document held out (other roles: same keys)
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
    """Tokenize a domain into `cache_root/tokens/<name>-<key>/` (or reuse a valid cache) and describe it.

    Each source file is a shard with its own content-keyed entry in `cache_root/token_shards/`: a domain whose
    sources gained a file encodes only that file. Shards are built by `num_proc` processes (one shard each at a
    time); the domain's train files are hard links to its shards' arrays (nothing is copied)."""
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
    if meta is not None and spec.source_weights and "train_sources" not in meta:
        # Built before caches recorded each train file's source: the domain entry (links and the small held-out
        # arrays) is rebuilt from its shards, which are reused (nothing is encoded again).
        _discard_damaged(final, lambda d: m if (m := _valid_meta(d, key)) and "train_sources" in m else None,
                         why=f"predates per-source records (data.domains.{spec.name}.source_weights)")
        meta = None
    if meta is None:
        if is_complete(final):
            _discard_damaged(final, functools.partial(_valid_meta, key=key))
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
        eos_id=meta["eos_id"], stats=meta["stats"], heldout_sha256=meta["heldout_sha256"],
        train_files=tuple((name, int(n)) for name, n in meta["train_files"]),
        train_sources=tuple(meta.get("train_sources", ())), source_weights=tuple(spec.source_weights), **counts,
    )  # fmt: skip


def _arrays_ok(directory: Path, meta: dict, files: list[tuple[str, int]]) -> bool:
    itemsize = np.dtype(meta["dtype"]).itemsize
    for name, n in files:
        if (directory / name).stat().st_size != int(n) * itemsize:
            return False
    counts = np.load(directory / UNIGRAM_FILE, mmap_mode="r")
    return counts.shape == (int(meta["vocab_size"]),) and int(counts.sum()) == int(meta["n_train_tokens"]) and (
        directory / HELDOUT_FILE).is_file() and ("part" not in meta or (directory / DOC_HASHES).is_file())


def _valid_meta(directory: Path, key: str) -> dict | None:
    """A domain cache's meta if the directory is complete and its arrays have the recorded sizes, else None."""
    return _checked_meta(directory, key, lambda meta: [*map(tuple, meta["train_files"]),
                                                       ("val.bin", meta["n_val_tokens"])]
                         if sum(int(n) for _, n in meta["train_files"]) == int(meta["n_train_tokens"]) else None)


def _valid_shard_meta(directory: Path, key: str) -> dict | None:
    """A shard's meta if the directory is complete and its two arrays have the recorded sizes, else None."""
    return _checked_meta(directory, key, lambda meta: [("train.bin", meta["n_train_tokens"]),
                                                       ("val.bin", meta["n_val_tokens"])])


def _checked_meta(directory: Path, key: str, arrays) -> dict | None:
    """The meta.json of a complete cache entry of this format and key whose `arrays(meta)` (name, tokens) pairs
    match the files on disk; None for anything incomplete, stale or damaged (`arrays` may return None)."""
    if not is_complete(directory):
        return None
    try:
        meta = json.loads((directory / "meta.json").read_text(encoding="utf-8"))
        if meta["format"] != FORMAT_VERSION or meta["key"] != key:
            return None
        files = arrays(meta)
        if files is None or not _arrays_ok(directory, meta, files):
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return meta


def _discard_damaged(final: Path, validate, why: str = "is damaged (truncated array or unreadable meta.json)") -> None:
    """Un-complete a damaged cache under the build lock so that `build_once` rebuilds it (never use a bad cache)."""
    from filelock import FileLock

    with FileLock(str(final) + ".lock"):
        # Another process may have rebuilt it while we waited for the lock.
        if is_complete(final) and validate(final) is None:
            log.warning("token cache %s %s; rebuilding it", final, why)
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


class SpmEncoder:
    """SentencePiece itself as a cache encoder: faster than the Hugging Face tokenizer exported from the same
    model (benchmarks/README.md), and used only where it gives that tokenizer's ids (`fastest_encoder`)."""

    def __init__(self, model_file: Path, num_threads: int = 1):
        import sentencepiece as spm

        self.model_file, self.num_threads = Path(model_file), num_threads
        self.sp = spm.SentencePieceProcessor(model_file=str(model_file))

    def encode_batch(self, docs: list[str]) -> list[list[int]]:
        return self.sp.encode(docs, num_threads=self.num_threads)


# Texts every encoder check includes besides the corpus sample: whitespace runs, tabs, newlines, digits, emoji,
# code and CJK, where an exported tokenizer most often departs from its SentencePiece model.
_CHECK_TEXTS = ["Hello world.", " leading", "trailing  ", "runs  of   spaces", "tab\there\n\nnew lines\n",
                "digits 1234567890 3.14", "emoji 🙂🚀 and ümlauts", "def f(x):\n    return x ** 2  # code",
                "中华人民共和国成立于1949年。", "「引号」、《书名》和——破折号……", "\u3000全角空格", ""]
ENCODER_CHECK_DOCS = 256  # corpus documents in the encoder check


def fastest_encoder(tok, tokenizer_dir: Path, sample: list[str]) -> str:
    """"spm" when the directory's SentencePiece model (tokenizer.model) gives exactly the Hugging Face tokenizer's
    ids on `sample` and the check texts, else "hf" (the Rust batch encoder of the tokenizer itself)."""
    model = Path(tokenizer_dir) / "tokenizer.model"
    if not model.is_file():
        return "hf"
    try:
        spm_encoder = SpmEncoder(model)
    except (OSError, RuntimeError):
        return "hf"
    texts = _CHECK_TEXTS + list(sample)
    hf_ids = [e.ids for e in tok.backend_tokenizer.encode_batch_fast(texts, add_special_tokens=False)] if getattr(
        tok, "is_fast", False) else tok(texts, add_special_tokens=False)["input_ids"]
    return "spm" if spm_encoder.encode_batch(texts) == hf_ids else "hf"


def encode_documents(tok, docs: list[str], eos_id: int, dtype: str) -> np.ndarray:
    """The ids of every document, each followed by `eos_id`, as one flat array (no BOS, no special tokens).
    `tok` is a Hugging Face tokenizer or an `SpmEncoder` checked against it."""
    backend = getattr(tok, "backend_tokenizer", None) if getattr(tok, "is_fast", False) else None
    if isinstance(tok, SpmEncoder):
        ids = tok.encode_batch(docs)
    elif backend is not None:
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


# Per-worker state of the shard-building pool, set once by the initializer (spawned workers share nothing).
_WORKER: tuple | None = None


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity mask (taskset, a SLURM or container allocation), not every
    core of the node that `os.cpu_count()` reports."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # no affinity call on this platform (macOS)
        return os.cpu_count() or 1


def _worker_init(tokenizer_dir: str, dtype: str, eos_id: int, encoder: str = "hf", threads: int = 1) -> None:
    # Each worker encodes on its share of the CPUs (`threads`), SentencePiece and the Rust tokenizer alike: the
    # Rust thread pool is sized by RAYON_NUM_THREADS when it first encodes, which is after this.
    os.environ["TOKENIZERS_PARALLELISM"] = "true" if threads > 1 else "false"
    os.environ["RAYON_NUM_THREADS"] = str(threads)
    global _WORKER
    if encoder == "spm":  # SentencePiece alone: the worker starts without importing transformers
        tok = SpmEncoder(Path(tokenizer_dir) / "tokenizer.model", num_threads=threads)
    else:
        tok = load_tokenizer(Path(tokenizer_dir))
    _WORKER = (tok, eos_id, dtype)


def _worker_encode(docs: list[str]) -> np.ndarray:
    tok, eos_id, dtype = _WORKER
    return encode_documents(tok, docs, eos_id, dtype)


def _worker_shard(job: "_ShardJob") -> dict:
    return _shard(job, functools.partial(map, _worker_encode), lambda docs, tokens: None)


@dataclass(frozen=True)
class _ShardJob:
    """One source file (or demo/dataset source) to encode into its own cache entry."""

    part: SourcePart
    label: str  # the source it came from (error messages)
    final: Path
    key: str
    text_field: str
    on_bad_text: str
    rule: HeldoutRule
    limit: int | None  # max_docs left for this shard (None: all)
    dtype: str
    vocab_size: int
    max_doc_bytes: int | None = MAX_DOC_BYTES


def _rule_id(rule: HeldoutRule, heldout) -> dict:
    if rule.everything:
        return {"all": True, "seed": rule.seed}
    if rule.threshold is not None:
        return {"share": heldout, "seed": rule.seed}
    return {"texts": documents_sha256(sorted(rule.texts)), "seed": rule.seed}


def _shard_key(part: SourcePart, *, tokenizer: str, text_field: str, on_bad_text: str, rule: dict,
               limit: int | None) -> str:
    return hash_obj({"format": FORMAT_VERSION, "part": {"kind": part.kind, "target": part.target if not part.is_file
                                                        else None, "split": part.split},
                     "fingerprint": part_fingerprint(part), "text_field": text_field, "on_bad_text": on_bad_text,
                     "rule": rule, "limit": limit, "tokenizer": tokenizer})


def _shard(job: _ShardJob, encode, advance) -> dict:
    """The shard's meta, building its entry first unless a valid one exists (under the entry's lock)."""
    meta = _valid_shard_meta(job.final, job.key)
    if meta is None:
        if is_complete(job.final):
            _discard_damaged(job.final, functools.partial(_valid_shard_meta, key=job.key))
        build_once(job.final, functools.partial(_build_shard, job, encode, advance))
        meta = _valid_shard_meta(job.final, job.key)
        if meta is None:
            raise CptlabError(f"token cache {job.final} is invalid right after it was built; delete it and retry")
    return meta


def _build_shard(job: _ShardJob, encode, advance, out: Path) -> None:
    """Stream one shard's documents through the held-out rule into train.bin and val.bin (+ the held-out texts in
    heldout.jsonl), each side encoded batch by batch: memory holds a batch, never the shard."""
    stats = {"bad_text_replaced": 0, "bad_text_skipped": 0, "docs_read": 0, "docs_blank": 0}
    n_train_docs = 0
    held = {"docs": 0, "tokens": 0, "bytes": 0}
    val_batch: list[str] = []
    trained = array.array("Q")  # doc_hash of every trained-on document (DOC_HASHES), 8 bytes each

    with open(out / "val.bin", "wb") as val_bin, open(out / HELDOUT_FILE, "w", encoding="utf-8",
                                                      errors="surrogatepass") as texts:

        def flush_val() -> None:
            if not val_batch:
                return
            ids = next(iter(encode([val_batch])))
            ids.tofile(val_bin)
            texts.writelines(json.dumps(doc, ensure_ascii=False) + "\n" for doc in val_batch)
            held["docs"] += len(val_batch)
            held["tokens"] += ids.size
            held["bytes"] += sum(len(d.encode("utf-8", errors="surrogatepass")) for d in val_batch)
            advance(len(val_batch), ids.size)
            val_batch.clear()

        def train_batches() -> Iterator[list[str]]:
            nonlocal n_train_docs
            def non_blank() -> Iterator[str]:
                for doc in iter_part(job.part, text_field=job.text_field, on_bad_text=job.on_bad_text,
                                     stats=stats, label=job.label, max_doc_bytes=job.max_doc_bytes):
                    if doc.strip():
                        yield doc
                    else:
                        stats["docs_blank"] += 1

            docs = non_blank()
            batch, size = [], 0
            for doc in itertools.islice(docs, job.limit):
                stats["docs_read"] += 1
                if job.rule(doc):
                    val_batch.append(doc)
                    if len(val_batch) >= _BATCH_DOCS:
                        flush_val()
                    continue
                batch.append(doc)
                trained.append(doc_hash(doc, job.rule.seed))
                size += len(doc)
                if len(batch) >= _BATCH_DOCS or size >= _BATCH_CHARS:
                    n_train_docs += len(batch)
                    yield batch
                    batch, size = [], 0
            if batch:
                n_train_docs += len(batch)
                yield batch

        counts = np.zeros(job.vocab_size, dtype=np.int64)
        n_train = _write_split(out / "train.bin", train_batches(), encode, advance, counts=counts)
        flush_val()
    np.save(out / UNIGRAM_FILE, counts)
    np.save(out / DOC_HASHES, np.unique(np.frombuffer(trained, dtype=np.uint64)))
    atomic_write_json(out / "meta.json", {
        "format": FORMAT_VERSION, "key": job.key, "part": {"kind": job.part.kind, "target": job.part.target},
        "dtype": job.dtype, "vocab_size": job.vocab_size, "n_train_tokens": n_train, "n_val_tokens": held["tokens"],
        "n_train_docs": n_train_docs, "n_val_docs": held["docs"], "docs_read": stats["docs_read"],
        "train_hash": hash_file(out / "train.bin"), "val_bytes": held["bytes"], "stats": stats,
    })  # fmt: skip


def _build_shards(spec: DomainSpec, tokenizer_dir: Path, tokens_root: Path, *, tokenizer_hash: str, seed: int,
                  num_proc: int, on_bad_text: str, progress: bool, group: int = 0, groups: int = 1):
    """Build (or reuse) the shard entries of a domain — with `groups` > 1 only every `groups`-th shard from
    `group` on — and return (the domain's parts, [(source, shard meta)] of the shards it uses, vocab, eos, dtype)."""
    tok = load_tokenizer(tokenizer_dir)  # before reading: a bad tokenizer fails before the expensive part
    eos_id = int(tok.eos_token_id)
    vocab_size = vocab_size_of(tok)
    dtype = token_dtype(vocab_size)
    _check_sources(spec)
    rule = heldout_rule(spec, seed=seed, on_bad_text=on_bad_text)
    shards_root = tokens_root.parent / SHARDS_DIR
    parts = [(source, part) for source in _sources(spec) for part in resolve_source(source)]

    def job(source: str, part: SourcePart, limit: int | None) -> _ShardJob:
        shard_key = _shard_key(part, tokenizer=tokenizer_hash, text_field=spec.text_field,
                               on_bad_text=on_bad_text, rule=_rule_id(rule, spec.heldout), limit=limit)
        return _ShardJob(part, source, shards_root / shard_key, shard_key, spec.text_field, on_bad_text, rule,
                         limit, dtype, vocab_size, max_doc_bytes=spec.max_doc_bytes)

    show = progress and sys.stderr.isatty() and os.environ.get("CI") != "true"
    encoder = fastest_encoder(tok, tokenizer_dir, list(itertools.islice(
        domain_documents(spec, on_bad_text=on_bad_text), ENCODER_CHECK_DOCS)))
    log.info("domain %s: encoding with %s", spec.name, "SentencePiece" if encoder == "spm" else "tokenizers")
    cpus = usable_cpus()
    main_tok = SpmEncoder(tokenizer_dir / "tokenizer.model", num_threads=cpus) if encoder == "spm" else tok
    local = functools.partial(map, functools.partial(encode_documents, main_tok, eos_id=eos_id, dtype=dtype))
    metas: list[tuple[str, dict]] = []
    with _progress_bar(show, f"tokenizing {spec.name}") as advance:
        if spec.max_docs is not None:
            if groups > 1:
                raise CptlabError(f"data.domains.{spec.name}: shard groups need every shard's documents; unset "
                                  "max_docs (data.max_docs) to prepare it in groups")
            # Each shard's cap depends on the shards before it: one after the other, until the cap is reached.
            left = spec.max_docs
            for source, part in parts:
                if left <= 0:
                    break
                meta = _shard(job(source, part, left), local, advance)
                metas.append((source, meta))
                left -= meta["docs_read"]
        else:
            jobs = [job(source, part, None) for source, part in parts[group::groups]]  # fingerprints: the group's
            todo = [j for j in jobs if _valid_shard_meta(j.final, j.key) is None]
            if num_proc > 1 and len(todo) > 1:
                # spawn, not fork: a forked child would inherit the parent's (possibly running) Rust thread pool.
                ctx = multiprocessing.get_context("spawn")
                workers = min(num_proc, len(todo))
                # Encoder threads per worker: the allowed CPUs shared out, so workers x threads fill them.
                with ctx.Pool(workers, initializer=_worker_init,
                              initargs=(str(tokenizer_dir), dtype, eos_id, encoder, max(1, cpus // workers))) as pool:
                    for meta in pool.imap_unordered(_worker_shard, todo):
                        advance(meta["docs_read"], meta["n_train_tokens"] + meta["n_val_tokens"])
            metas = [(j.label, _shard(j, local, advance)) for j in jobs]
    return parts, metas, vocab_size, eos_id, dtype


def prepare_shards(spec: DomainSpec, tokenizer_dir: Path, cache_root: Path, *, group: int, groups: int,
                   seed: int = 0, num_proc: int = 1, on_bad_text: str = "replace", progress: bool = False) -> int:
    """Fill the shared cache with shard group `group` of `groups` of a domain (every `groups`-th source file):
    what `cptlab-prepare` jobs of a cluster array do before training starts; the training job's
    `prepare_domain` then only links them. Returns the number of shards of the group."""
    _check_spec(spec, on_bad_text)
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1 or not 0 <= group < groups:
        raise CptlabError(f"shard group {group!r} of {groups!r}: groups must be >= 1 and 0 <= group < groups")
    tokenizer_dir = Path(tokenizer_dir)
    if not tokenizer_dir.is_dir():
        raise CptlabError(f"tokenizer directory not found: {tokenizer_dir}")
    metas = _build_shards(spec, tokenizer_dir, Path(cache_root) / "tokens", tokenizer_hash=hash_dir(tokenizer_dir),
                          seed=seed, num_proc=num_proc, on_bad_text=on_bad_text, progress=progress, group=group,
                          groups=groups)[1]
    return len(metas)


def _build(spec, tokenizer_dir, out: Path, *, key, inputs, seed, num_proc, on_bad_text, progress) -> None:
    """Build (or reuse) the entry of every shard of the domain, then the domain entry: hard links to the
    shards' train arrays, the held-out arrays and texts concatenated (small), the unigram counts summed."""
    shards_root = out.parent.parent / SHARDS_DIR
    parts, metas, vocab_size, eos_id, dtype = _build_shards(
        spec, tokenizer_dir, out.parent, tokenizer_hash=inputs["tokenizer"], seed=seed, num_proc=num_proc,
        on_bad_text=on_bad_text, progress=progress)
    _check_not_empty(spec, parts, metas)
    n_train_docs = sum(m["n_train_docs"] for _, m in metas)
    n_val_docs = sum(m["n_val_docs"] for _, m in metas)
    if (not n_train_docs and spec.role != "eval") or not n_val_docs:
        raise _split_error(spec, n_train_docs, n_val_docs)
    used = [(j_meta, shards_root / j_meta["key"]) for _, j_meta in metas if j_meta["n_train_tokens"]]
    train_sources = [source for source, j_meta in metas if j_meta["n_train_tokens"]]  # which source each came from
    train_files = []
    for i, (meta, shard_dir) in enumerate(used):
        name = "train.bin" if len(used) == 1 else f"train-{i:05d}.bin"
        _link(shard_dir / "train.bin", out / name)
        train_files.append((name, int(meta["n_train_tokens"])))
    counts = np.zeros(vocab_size, dtype=np.int64)
    stats = {"bad_text_replaced": 0, "bad_text_skipped": 0, "docs_read": 0}
    with open(out / "val.bin", "wb") as val_bin, open(out / HELDOUT_FILE, "wb") as texts:
        for _, meta in metas:
            shard_dir = shards_root / meta["key"]
            counts += np.load(shard_dir / UNIGRAM_FILE)
            for name, dst in (("val.bin", val_bin), (HELDOUT_FILE, texts)):
                with open(shard_dir / name, "rb") as src:
                    shutil.copyfileobj(src, dst)
            for k in stats:
                stats[k] += meta["stats"][k]

    def heldout() -> Iterator[str]:
        with open(out / HELDOUT_FILE, encoding="utf-8", errors="surrogatepass") as f:
            yield from map(json.loads, f)

    np.save(out / UNIGRAM_FILE, counts)
    atomic_write_json(out / "meta.json", {
        "format": FORMAT_VERSION, "key": key, "key_inputs": inputs, "name": spec.name,
        "tokenizer_dir": str(tokenizer_dir), "dtype": dtype, "vocab_size": vocab_size, "eos_id": eos_id,
        "n_train_tokens": sum(n for _, n in train_files), "n_val_tokens": sum(m["n_val_tokens"] for _, m in metas),
        "n_train_docs": n_train_docs, "n_val_docs": n_val_docs, "val_bytes": sum(m["val_bytes"] for _, m in metas),
        "train_files": train_files, "train_sources": train_sources, "shards": [m["key"] for _, m in metas],
        # the content hash of the train array: its file's, or for several shard files a hash of theirs, in order
        "train_hash": used[0][0]["train_hash"] if len(used) == 1 else hash_obj([m["train_hash"] for m, _ in used]),
        # (an eval domain trains on nothing: no train file, the hash of an empty list)
        "val_hash": hash_file(out / "val.bin"), "heldout_sha256": documents_sha256(heldout()), "stats": stats,
    })  # fmt: skip


def _check_not_empty(spec: DomainSpec, parts: list, metas: list[tuple[str, dict]]) -> None:
    """A source without any document is an error, as when it is read whole (`iter_documents`)."""
    read = {source: 0 for source, _ in parts}
    blank = dict(read)
    for source, meta in metas:
        read[source] += meta["docs_read"]
        blank[source] += meta["stats"].get("docs_blank", 0)
    reached = {source for source, _ in metas}
    for source, n in read.items():
        if source in reached and not n:
            why = f" (all {blank[source]} are empty or whitespace)" if blank[source] else ""
            raise CptlabError(f"data source {source} has no documents{why}")


def _link(src: Path, dst: Path) -> None:
    """`dst` as a hard link to `src` (no copy); a symbolic link where the file system has no hard links."""
    try:
        os.link(src, dst)
    except OSError:
        os.symlink(os.path.relpath(src, dst.parent), dst)


def _write_split(path: Path, batches, encode, advance, counts: np.ndarray | None = None) -> int:
    """Encode `batches` of documents, appending to `path` in document order; returns the token count.
    `counts` (one entry per vocabulary id) is incremented by each batch's token counts."""
    batches_seen: deque = deque()

    def remember(items):
        for batch in items:  # the batch sizes travel beside the encoded arrays, in the same order
            batches_seen.append(len(batch))
            yield batch

    n_tokens = 0
    with open(path, "wb") as f:
        for ids in encode(remember(batches)):
            ids.tofile(f)
            n_tokens += ids.size
            if counts is not None:
                counts += np.bincount(ids, minlength=counts.size)
            advance(batches_seen.popleft(), ids.size)
    return n_tokens


@contextlib.contextmanager
def _progress_bar(enabled: bool, description: str):
    """Yields `advance(n_docs, n_tokens)`: a rich progress line with documents and tokens per second on an
    interactive terminal (the corpus is streamed, so its size is not known ahead), a no-op otherwise."""
    if not enabled:
        yield lambda docs, tokens: None
        return
    from rich.console import Console
    from rich.progress import Progress, ProgressColumn, SpinnerColumn, TextColumn, TimeElapsedColumn
    from rich.text import Text

    class Rates(ProgressColumn):
        def render(self, task) -> Text:
            elapsed = task.elapsed or 0
            tokens = task.fields["tokens"]
            if not elapsed:
                return Text(f"{task.completed:,.0f} docs")
            return Text(f"{task.completed:,.0f} docs, {tokens:,} tokens ({task.completed / elapsed:,.0f} docs/s, "
                        f"{tokens / elapsed:,.0f} tokens/s)")

    with Progress(SpinnerColumn(), TextColumn("{task.description}"), Rates(), TimeElapsedColumn(),
                  console=Console(stderr=True)) as bar:
        task = bar.add_task(description, total=None, tokens=0)

        def advance(docs: int, tokens: int) -> None:
            bar.update(task, advance=docs, tokens=bar.tasks[task].fields["tokens"] + tokens)

        yield advance

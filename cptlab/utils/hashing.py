"""Content hashes that key the shared caches (tokenizers, token arrays, demo base)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


def hash_obj(obj) -> str:
    """A stable short hash of a JSON-serialisable object."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:16]


def hash_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()[:16]


def hash_dir(path: str | os.PathLike, names: list[str] | None = None) -> str:
    """Hash of the named files (default: every file, sorted) of a directory, by content."""
    path = Path(path)
    files = sorted(p for p in path.iterdir() if p.is_file()) if names is None else [path / n for n in names]
    return hash_obj([(p.name, hash_file(p)) for p in files if p.exists()])

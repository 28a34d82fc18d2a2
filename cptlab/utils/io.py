"""Atomic writes and build-once shared caches: nothing half-written is ever visible under its final name."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock

COMPLETE_MARKER = ".complete"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def public_mode(path: str | os.PathLike) -> None:
    """Give a mkstemp/mkdtemp result the permissions an ordinary open()/mkdir() would have."""
    os.chmod(path, (0o777 if os.path.isdir(path) else 0o666) & ~_umask())


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same directory and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        public_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def is_complete(directory: str | os.PathLike) -> bool:
    return (Path(directory) / COMPLETE_MARKER).exists()


def build_once(final_dir: str | os.PathLike, build: Callable[[Path], None]) -> Path:
    """Return `final_dir`, building it with `build(tmp_dir)` unless a complete copy already exists.

    Concurrent callers (sweep jobs, DDP ranks) serialise on a file lock; the build writes into a
    temporary sibling directory that is renamed into place only once it is finished, so a crash
    half-way never leaves a directory that looks complete. An incomplete leftover is replaced.
    """
    final_dir = Path(final_dir)
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    if is_complete(final_dir):
        return final_dir
    with FileLock(str(final_dir) + ".lock"):
        if is_complete(final_dir):
            return final_dir
        tmp = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}.", suffix=".tmp", dir=final_dir.parent))
        try:
            build(tmp)
            (tmp / COMPLETE_MARKER).write_text("ok\n")
            public_mode(tmp)
            if final_dir.exists():
                shutil.rmtree(final_dir)
            os.replace(tmp, final_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final_dir


def replace_dir(out_dir: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Replace `out_dir` with a directory that `write(tmp)` fills: built beside it, then swapped in with
    renames, so `out_dir` is never half-written (the old one is removed once the new one is in place)."""
    out_dir = Path(out_dir).expanduser()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        write(tmp)
        public_mode(tmp)
        old = None
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir

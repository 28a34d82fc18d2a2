"""Atomic writes and build-once shared caches: nothing half-written is ever visible under its final name."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from filelock import FileLock

from cptlab.errors import CptlabError, no_space

COMPLETE_MARKER = ".complete"
# Written into every directory cptlab replaces as a whole (model exports, published models, tokenizers from
# cptlab-tokenizer) and into every run directory it creates: {"kind": "model" | "tokenizer" | "run", ...}. Only
# such a directory of the expected kind (or an absent path, or an empty directory) is ever replaced or written
# into: a directory is never taken for cptlab's by the names of the files it holds (a user's model or git
# checkout holds the same names).
OUTPUT_MARKER = ".cptlab-output.json"


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
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if (full := no_space(err, path)) is not None:  # a full disk: one line naming the file
            raise full from None
        raise


def save_figure(fig, path: str | os.PathLike, **savefig) -> Path:
    """A matplotlib figure as a PNG at `path`, written atomically (a reader never sees half a picture), and
    closed (pyplot keeps every open figure alive)."""
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", **savefig)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_csv(path: str | os.PathLike, fields: list[str], rows) -> None:
    """A CSV of `rows` (dicts) in the columns `fields`, a missing or None value an empty cell, written atomically."""
    import csv
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in fields})
    atomic_write_text(path, buf.getvalue())


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def mark_output(directory: str | os.PathLike, kind: str) -> None:
    """Mark `directory` as cptlab's output of `kind`, so that a later run may replace it (check_replaceable)."""
    atomic_write_json(Path(directory) / OUTPUT_MARKER, {"kind": kind, "written_by": "cptlab"})


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
        if final_dir.is_symlink():  # a shared entry linked in: never built through, nor replaced
            raise CptlabError(f"cache entry {final_dir} is a symbolic link to {os.readlink(final_dir)}, which is not "
                              "a complete cptlab cache entry: remove the link (it is then rebuilt) or repair its target")
        remove_dead_builds(final_dir)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}.", suffix=".tmp", dir=final_dir.parent))
        try:
            build(tmp)
            (tmp / COMPLETE_MARKER).write_text("ok\n")
            public_mode(tmp)
            if final_dir.exists():
                shutil.rmtree(final_dir)
            os.replace(tmp, final_dir)
        except BaseException as err:
            shutil.rmtree(tmp, ignore_errors=True)
            if (full := no_space(err, final_dir)) is not None:  # a full disk: one line naming the entry
                raise full from None
            raise
    return final_dir


def output_kind(directory: str | os.PathLike) -> str | None:
    """The kind of cptlab output `directory` holds ("model", "tokenizer"), from its marker; None if unmarked."""
    try:
        return json.loads((Path(directory) / OUTPUT_MARKER).read_text(encoding="utf-8")).get("kind")
    except (OSError, ValueError, AttributeError):
        return None


Inputs = dict[str, "str | os.PathLike | None"] | Iterable[tuple[str, "str | os.PathLike | None"]]


def _overlap(out: Path, what: str, inputs: Inputs) -> None:
    """Refuse an output path that is, lies inside, or holds one of `inputs` ({key or option: path}, or such
    pairs; only paths that exist are compared: a hub id is not a place on this disk). Replacing it would
    destroy the input."""
    mine = Path(os.path.realpath(out))
    for name, given in inputs.items() if isinstance(inputs, dict) else inputs:
        if not given or not Path(given).expanduser().exists():
            continue
        theirs = Path(os.path.realpath(Path(given).expanduser()))
        how = ("is" if mine == theirs else "lies inside" if theirs in mine.parents
               else "holds" if mine in theirs.parents else None)
        if how is not None:
            raise CptlabError(f"{what} {out} {how} {name} ({given}): an output never replaces an input; choose "
                              "another path; nothing was changed")


def check_replaceable(path: str | os.PathLike, kind: str, what: str, inputs: Inputs = ()) -> Path:
    """Refuse (one line naming `what`, the key or option that chose `path`) to replace anything but an absent
    path, an empty directory, or cptlab's own output of this `kind` (its OUTPUT_MARKER: never a directory taken
    for one by the names of its files), and an output that is, lies inside or holds one of `inputs`.
    Cheap; call it before any work. Returns the path."""
    path = Path(path).expanduser()
    _overlap(path, what, inputs)
    if not path.exists() and not path.is_symlink():
        for parent in path.parents:  # a path under an existing file can never be created
            if parent.exists():
                if not parent.is_dir():
                    raise CptlabError(f"{what} {path}: {parent} is a file, not a directory")
                break
        return path
    if not path.is_dir() or path.is_symlink():
        raise CptlabError(f"{what} {path} exists and is not a directory: choose another path")
    if next(path.iterdir(), None) is not None and output_kind(path) != kind:
        raise CptlabError(f"{what} {path} is a non-empty directory that is not a {kind} export written by cptlab "
                          f"(no {OUTPUT_MARKER}): choose another path; nothing was changed")
    return path


def remove_dead_builds(final_dir: Path) -> list[Path]:
    """Delete the temporary directories of earlier builds of `final_dir` (a killed process leaves its own: the
    new one being built, `.NAME.XXXXXXXX.tmp`, or the old one being swapped out, `.NAME.old-PID` or
    `.NAME.XXXXXXXX.old`). Called while holding `final_dir`'s build lock, which every builder holds while its
    temporaries exist: any such directory found then belongs to a build that is no longer running."""
    name = re.escape(final_dir.name)
    pattern = re.compile(rf"\.{name}\.([A-Za-z0-9_]{{8}}\.(tmp|old)|old-\d+)")
    removed = [p for p in final_dir.parent.iterdir() if pattern.fullmatch(p.name) and p.is_dir()]
    for p in removed:
        shutil.rmtree(p, ignore_errors=True)
    return removed


def replace_dir(out_dir: str | os.PathLike, write: Callable[[Path], None], *, kind: str | None = None,
                what: str = "output", prog: str = "cptlab") -> Path:
    """Replace `out_dir` with a directory that `write(tmp)` fills: built beside it, then swapped in with
    renames, so `out_dir` is never half-written (the old one is removed once the new one is in place).
    With `kind`, only what `check_replaceable` allows is replaced, and the new directory is marked as that kind.
    The whole replacement holds `.NAME.lock` (cptlab.utils.lease; removed at the end): a second writer of the same
    path is refused, and what a killed writer left beside it (its temporaries, its lock) is removed first."""
    from cptlab.utils.lease import LeaseLock

    out_dir = Path(out_dir).expanduser()
    if kind is not None:
        check_replaceable(out_dir, kind, what)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with LeaseLock(out_dir.parent / f".{out_dir.name}.lock", subject=f"{what} {out_dir}", prog=prog):
        remove_dead_builds(out_dir)
        if kind is not None:  # again, under the lock: another writer may have finished meanwhile
            check_replaceable(out_dir, kind, what)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
        try:
            write(tmp)
            if kind is not None:
                mark_output(tmp, kind)
            public_mode(tmp)
            old = None
            if out_dir.exists():
                old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
                os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException as err:
            shutil.rmtree(tmp, ignore_errors=True)
            if (full := no_space(err, out_dir)) is not None:  # a full disk: one line naming the output
                raise full from None
            raise
    return out_dir

"""Checkpoint files: written to a temporary name and renamed into place, so a write interrupted half-way (a
kill, a full disk) never leaves a `last.ckpt` that fails to load; read with torch's weights-only unpickler only,
so a checkpoint from a shared or downloaded run directory never runs code; and the lookup of the checkpoint to
resume, which also removes the temporary files of saves that a killed process left behind."""

from __future__ import annotations

import errno
import json
import os
import pickle
import re
import shutil
import socket
from pathlib import Path

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from cptlab.errors import CptlabError
from cptlab.rundir.layout import LOCK, checkpoints_dir, last_checkpoint

# The types beyond tensors, plain containers, numbers, strings and None that cptlab's checkpoints hold, admitted
# by the weights-only unpickler (torch.serialization.safe_globals). None: cptlab and Lightning save only those
# (tests/reliability/test_checkpoint_security.py loads real ones), so a checkpoint naming any other global
# is not one cptlab wrote, and is refused rather than trusted.
SAFE_GLOBALS: tuple = ()

# `.<name>.tmp-<pid>` in the checkpoints directory: a save in progress, or one a killed process left.
TEMPORARY = re.compile(r"\.(?P<target>.+)\.tmp-(?P<pid>\d+)")


def temporary_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


class UnsafeCheckpoint(CptlabError):
    """A file that the weights-only unpickler refuses: it would run code, or build objects, when loaded."""


def load_checkpoint_file(path: Path | str, *, map_location="cpu", mmap: bool = False) -> dict:
    """torch.load with weights_only=True, for every checkpoint cptlab reads (resume, Lightning's own restore,
    cptlab-export, cptlab-merge). A refused pickle is UnsafeCheckpoint, any other failure CptlabError: one
    line naming the file, and nothing of the file has run."""
    try:
        with torch.serialization.safe_globals(list(SAFE_GLOBALS)):
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        raise UnsafeCheckpoint(f"{path} is refused: {_refusal(str(err))}, which no cptlab checkpoint holds (loading "
                               "it could run code; it was not loaded and nothing in it ran)") from None
    except Exception as err:
        reason = " ".join(str(err).split())[:160] or type(err).__name__
        raise CptlabError(f"{path} is damaged (cannot be read: {reason})") from None


def _refusal(message: str) -> str:
    """What the weights-only unpickler refused, from its (many-line) message: "its pickle names posix.system"."""
    found = re.search(r"unsupported (?:global: )?GLOBAL ([\w.]+)", message, re.IGNORECASE)
    if found:
        return f"its pickle names {found.group(1).rstrip('.')}"
    first = next((line.strip() for line in message.splitlines() if line.strip() and "Weights only" not in line),
                 "")
    return f"its pickle holds what the weights-only unpickler refuses ({first[:120]})"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO with atomic saves, one-line write failures, and weights-only loads (whatever
    `weights_only` Lightning passes: its default would unpickle anything in a run directory)."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temporary_path(path)
        try:
            # A file object, not a path: torch's own writer reports a full disk as a RuntimeError without errno.
            with _create(tmp) as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())  # on disk before the rename makes it the checkpoint
            os.replace(tmp, path)
        except (OSError, RuntimeError) as err:
            if isinstance(err, RuntimeError) and _os_error(err) is None and not _writer_failed(err):
                raise  # not the file system's doing: a bug, with its traceback
            raise CptlabError(write_failure(path, err)) from err  # the chain: for HYDRA_FULL_ERROR=1 only
        finally:
            tmp.unlink(missing_ok=True)

    def load_checkpoint(self, path, map_location=None, weights_only=None):
        return load_checkpoint_file(path, map_location=map_location or "cpu")


def _create(tmp: Path):
    """A new file at `tmp`, opened for writing. Never through a file or link already there (its name is easy to
    guess: in a shared run directory a planted link would have the checkpoint written over the file it points to);
    a leftover of a dead process with this pid is removed first."""
    tmp.unlink(missing_ok=True)
    return os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb")


def write_failure(path: Path, err: BaseException) -> str:
    """One line for a checkpoint save that failed: the path, why (the OSError behind torch's RuntimeError, if
    any), and that the previous checkpoint of that name is intact (the save never reached the rename)."""
    cause = _os_error(err)
    kept = (f"the previous {path.name} is intact: " if path.is_file() else "nothing was replaced: ")
    if cause is not None and cause.errno in (errno.ENOSPC, errno.EDQUOT):
        what = "no space left on device" if cause.errno == errno.ENOSPC else "disk quota exceeded"
        return (f"{what} writing {path} ({_free(path.parent)} free there); {kept}free space and re-run the same "
                "command to resume from the last checkpoint")
    if cause is not None:
        return f"cannot write {path}: {cause.strerror or cause}; {kept}re-run the same command once it is writable"
    reason = " ".join(str(err).split())[:160] or type(err).__name__
    return f"writing {path} failed ({reason}); {kept}re-run the same command to resume from the last checkpoint"


def _os_error(err: BaseException | None) -> OSError | None:
    """The first OSError with an errno in the exception's chain (torch wraps its file writer's error)."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno is not None:
            return err
        err = err.__cause__ or err.__context__
    return None


def _writer_failed(err: RuntimeError) -> bool:
    """torch's file writer's own report of a failed write (no errno: a path given to torch.save, not a file)."""
    return any(mark in str(err) for mark in ("PytorchStreamWriter", "inline_container", "iostream", "write failed"))


def _free(directory: Path) -> str:
    try:
        return f"{shutil.disk_usage(directory).free / 2**20:.1f} MiB"
    except OSError:
        return "unknown"


def remove_stale_temporaries(run_dir: Path | str) -> list[Path]:
    """Remove the temporary files (`.<name>.tmp-<pid>`, as large as a checkpoint) of saves that a killed process
    left in the run's checkpoints directory; returns them. The process holding the run's lock removes every one
    but its own (no other process saves into a locked run directory); without a lock, only those whose process
    is gone from this host; under another process's lock, none."""
    directory = checkpoints_dir(run_dir)
    if not directory.is_dir():
        return []
    owner = _lock_owner(Path(run_dir))
    holder = owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname()
    if owner and not holder:
        return []
    removed = []
    for path in sorted(directory.iterdir()):
        found = TEMPORARY.fullmatch(path.name)
        if not found or not path.is_file() or int(found["pid"]) == os.getpid():
            continue
        if holder or not _alive(int(found["pid"])):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _lock_owner(run_dir: Path) -> dict:
    try:
        owner = json.loads((run_dir / LOCK).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        return {"pid": None}  # unreadable: someone's lock, not this process's
    return owner if isinstance(owner, dict) else {"pid": None}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def resume_checkpoint(run_dir: Path, module: torch.nn.Module | None = None) -> Path | None:
    """The run's checkpoint to resume from, or None (after removing what killed saves left, see
    remove_stale_temporaries). A damaged or foreign file (see load_checkpoint_file), or one whose tensors do not
    fit `module` (the LightningModule about to load it), is refused with one line naming it (instead of the
    unpickler's or load_state_dict's pages of text)."""
    remove_stale_temporaries(run_dir)
    last = last_checkpoint(run_dir)
    if not last.is_file():
        return None
    how = ("delete it to start the run again from step 0 (or its run directory), or use a new run directory "
           "(hydra.run.dir=...)")
    try:  # memory-mapped: reads the index, not the tensors (Lightning then loads it for real)
        checkpoint = load_checkpoint_file(last, mmap=True)
    except CptlabError as err:
        raise type(err)(f"{err}; {how}") from None
    if not isinstance(checkpoint, dict) or "global_step" not in checkpoint:
        raise CptlabError(f"{last} is not a cptlab training checkpoint; {how}")
    if module is not None:
        mismatch = shape_mismatch(checkpoint, module)
        if mismatch:
            raise CptlabError(f"{last} does not fit this run's model: {mismatch} (the model, tokenizer or adapter "
                              f"config changed since it was written); {how}")
    return last


def shape_mismatch(checkpoint: dict, module: torch.nn.Module) -> str | None:
    """The first tensor of the checkpoint that this module has not, or has in another shape; None if all fit."""
    state = checkpoint.get("state_dict")
    if not isinstance(state, dict):
        return None  # a sharded (FSDP) checkpoint: its loader checks it
    own = module.state_dict()
    for key, tensor in state.items():
        if not hasattr(tensor, "shape"):
            continue
        if key not in own:
            return f"it holds {key}, which this model has not"
        if tuple(own[key].shape) != tuple(tensor.shape):
            return f"{key} is {tuple(tensor.shape)} there and {tuple(own[key].shape)} here"
    prefix = "model."
    params = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in own.items()}
    for key, entry in checkpoint.get("cptlab", {}).get("rows", {}).items():
        name = key[len(prefix):] if key.startswith(prefix) else key
        from cptlab.model.freeze import clean_name

        p = params.get(name, params.get(clean_name(name)))
        if p is None:
            return f"it holds rows of {name}, which this model has not"
        block = entry["rows"]
        if p.shape[0] - entry["start"] != block.shape[0] or tuple(p.shape[1:]) != tuple(block.shape[1:]):
            return (f"the rows of {name} are {tuple(block.shape)} from row {entry['start']} there, the matrix is "
                    f"{tuple(p.shape)} here")
    return None

"""Lock files with a lease. A lock names the process that holds a directory (pid, host, scheduler job) and the
holder refreshes its `heartbeat` while it runs, so the lock a killed process leaves is taken over by the next
one -- on this host as soon as its pid is gone, on any host once the heartbeat is older than
CPTLAB_LOCK_EXPIRY_S, and at once by a requeued scheduler job with the same SLURM_JOB_ID (SLURM requeue lands on
another node) -- while the lock of a live holder is refused. Without a lease a lock naming another host could
only be deleted by hand."""

from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

from cptlab.errors import CptlabError

EXPIRY_ENV = "CPTLAB_LOCK_EXPIRY_S"  # a lock whose heartbeat is older than this is taken over (default 300 s)
HEARTBEAT_ENV = "CPTLAB_LOCK_HEARTBEAT_S"  # how often the holder refreshes it (default 30 s, at most expiry / 3)
DEFAULT_EXPIRY_S = 300.0
DEFAULT_HEARTBEAT_S = 30.0
# A lock file with no owner in it: normally one being written this instant; one this old was left by a process
# killed between creating and writing it (or by a plain file lock of an earlier version, which never held one).
EMPTY_LEFTOVER_S = 10.0
# The heartbeat threads of this process, by absolute lock path: one per lock, however many objects acquire it.
_BEATING: dict[str, tuple[threading.Event, threading.Thread]] = {}


def _seconds(env: str, default: float) -> float:
    raw = os.environ.get(env)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise CptlabError(f"{env}={raw}: give a number of seconds > 0")
    return value


def expiry_s() -> float:
    return _seconds(EXPIRY_ENV, DEFAULT_EXPIRY_S)


def heartbeat_s() -> float:
    return min(_seconds(HEARTBEAT_ENV, DEFAULT_HEARTBEAT_S), expiry_s() / 3)


def _job() -> str | None:
    return os.environ.get("SLURM_JOB_ID") or None


def _write(path: Path, owner: dict) -> None:
    """Replace the lock file's content in one rename (a reader never sees it half-written)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(owner, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def alive(pid) -> bool:
    """Whether process `pid` of this host exists."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


class LeaseLock:
    """`path`, naming the process that holds `subject` (a phrase for messages: the directory it guards). A live
    holder is refused with `error`; a dead one's lock is taken over (a one-line `prog: warning:` says so unless
    its pid was seen gone on this host). While held, a daemon thread refreshes the heartbeat."""

    def __init__(self, path: Path | str, *, subject: str, prog: str = "cptlab", error: type = CptlabError):
        self.path = Path(path)
        self.subject = subject
        self.prog = prog
        self.error = error
        self.held = False

    def _owner(self) -> dict:
        try:
            owner = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return owner if isinstance(owner, dict) else {}

    def _me(self) -> dict:
        return {"pid": os.getpid(), "host": socket.gethostname(), "job": _job(),
                "since": time.strftime("%Y-%m-%d %H:%M:%S"), "heartbeat": time.time()}

    def stale(self, owner: dict) -> str | None:
        """Why the lock `owner` wrote may be taken over ("" when its pid is gone from this host: nothing to say),
        or None while its holder may be alive."""
        host, job = socket.gethostname(), _job()
        if owner.get("host") == host:
            if not alive(owner.get("pid")):
                return ""
            if owner.get("pid") == os.getpid():
                return None
        elif job and owner.get("job") == job:
            return f"it names this scheduler job (SLURM_JOB_ID={job}), requeued on {host}"
        beat = owner.get("heartbeat")
        if isinstance(beat, (int, float)) and not isinstance(beat, bool):
            age = time.time() - beat
            if age > expiry_s():
                return f"its heartbeat stopped {age:.0f} s ago (more than {EXPIRY_ENV}={expiry_s():g})"
        return None

    def acquire(self) -> LeaseLock:
        me = self._me()
        owner = self._owner()
        if owner.get("pid") == me["pid"] and owner.get("host") == me["host"]:
            self.held = True  # taken by this process already (the command-line front end)
            self._beat()
            return self
        for _ in range(10):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                state = self._take_over()
                if state == "live":
                    break
                if state == "being written":
                    time.sleep(0.2)
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(me, f)
            self.held = True
            for left in self.path.parent.glob(f".{self.path.name}.*.tmp"):  # a killed holder's heartbeat write
                left.unlink(missing_ok=True)
            self._beat()
            return self
        owner = self._owner()
        if owner:
            beat = owner.get("heartbeat")
            lease = (f" (heartbeat {time.time() - beat:.0f} s ago; taken over after {EXPIRY_ENV}={expiry_s():g} s)"
                     if isinstance(beat, (int, float)) else "")
            raise self.error(f"{self.subject} is in use by pid {owner.get('pid')} on {owner.get('host')} (since "
                             f"{owner.get('since')}){lease}: wait for it to finish, or delete {self.path} if that "
                             "process is gone") from None
        raise self.error(f"cannot take the lock {self.path}: delete it if no other process uses {self.subject}")

    def _take_over(self) -> str:
        """Remove the lock if its holder is gone ("taken"), saying so when that is not plain from its pid;
        otherwise "live", or "being written" (no owner in it yet)."""
        owner = self._owner()
        if owner:
            reason = self.stale(owner)
            if reason is None:
                return "live"
            if reason:
                print(f"{self.prog}: warning: took over {self.path} of pid {owner.get('pid')} on "
                      f"{owner.get('host')} (since {owner.get('since')}): {reason}", file=sys.stderr)
        else:
            try:
                age = time.time() - self.path.stat().st_mtime
            except FileNotFoundError:
                return "taken"
            if age < EMPTY_LEFTOVER_S:
                return "being written"
            print(f"{self.prog}: warning: removed {self.path}, an empty lock {age:.0f} s old (left by a killed "
                  "process)", file=sys.stderr)
        self.path.unlink(missing_ok=True)
        return "taken"

    def _beat(self) -> None:
        key = os.path.abspath(self.path)
        if key in _BEATING and _BEATING[key][1].is_alive():
            return
        stop = threading.Event()
        thread = threading.Thread(target=_heartbeat, args=(self.path, stop, heartbeat_s()), daemon=True,
                                  name=f"cptlab-lock-heartbeat:{self.path.name}")
        _BEATING[key] = (stop, thread)
        thread.start()

    def release(self) -> None:
        if self.held:
            stop, thread = _BEATING.pop(os.path.abspath(self.path), (None, None))
            if stop is not None:  # stopped first: a last heartbeat must not write the file back
                stop.set()
                thread.join(timeout=5)
            owner = self._owner()
            if owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname():
                self.path.unlink(missing_ok=True)
        self.held = False

    def __enter__(self) -> LeaseLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _heartbeat(path: Path, stop: threading.Event, interval: float) -> None:
    """Refresh the lock's heartbeat every `interval` seconds while it still names this process."""
    host = socket.gethostname()
    while not stop.wait(interval):
        try:
            owner = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(owner, dict) or owner.get("pid") != os.getpid() or owner.get("host") != host:
                return  # released, or taken over after this process stalled past the expiry
            _write(path, {**owner, "heartbeat": time.time()})
        except FileNotFoundError:
            return  # released
        except (OSError, ValueError):
            continue  # a full disk or a moment's NFS error: the next beat tries again

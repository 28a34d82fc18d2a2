"""The one exception type users see: a one-line message naming the file, key or value at fault."""

from __future__ import annotations

import errno
import os
import signal
import sys

# A write that found no room: the disk, or the user's quota on it.
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class CptlabError(Exception):
    """A user-facing error. `str(err)` is a single line that says what to fix."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split("\n")))


class RunDirRefused(CptlabError):
    """A run directory that this command must not touch (in use by another process, started with other
    inputs): reported, and nothing is written into it, not even a failed record."""


class Interrupted(CptlabError):
    """A command stopped by a signal (SIGTERM from `kill` or a scheduler, SIGUSR1 from SLURM pre-emption): not bad
    input, so it exits as a shell reports a process the signal ended (128 + the signal's number), and a sweep
    stops rather than going on with its next job."""

    def __init__(self, message: str, signal_name: str = "SIGTERM"):
        super().__init__(message)
        self.signal_name = signal_name
        self.exit_status = 128 + int(getattr(signal, signal_name, signal.SIGTERM))

    def __reduce__(self):  # raised in a worker process, re-raised in the parent: both arguments travel
        return type(self), (str(self), self.signal_name)


def no_space(err: BaseException, path: str | os.PathLike | None = None) -> CptlabError | None:
    """The one line for a write that found its disk (or quota) full, naming the path being written (`path`, else
    the error's own file name); None for any other error. A write's ENOSPC names no file by itself."""
    if not isinstance(err, OSError) or err.errno not in _NO_SPACE:
        return None
    where = path if path is not None else err.filename
    return CptlabError(f"{where or '(a file cptlab was writing)'}: {os.strerror(err.errno).lower()}: free space there "
                       f"(or point paths.cache_dir / CPTLAB_CACHE, CPTLAB_RUNS elsewhere) and re-run the command")


# Whether a signal raises `Interrupted` (inside a job, whose handler records the run as failed) or ends the
# process with one line (before or between jobs, in Hydra's own code, which would report an exception at length).
_in_job = False


def in_job(active: bool) -> None:
    """Mark the start (True) and the end (False) of a job's error handling: see `interrupt_on_signals`."""
    global _in_job
    _in_job = active


def interrupt_on_signals(prog: str, names: tuple[str, ...] = ("SIGTERM", "SIGUSR1")) -> None:
    """Make the first of these signals one line and exit status 128 + its number, never a traceback: inside a
    job (`in_job`) an `Interrupted` error, so the build in progress removes its temporary files and the job
    records the run as failed; elsewhere the process ends at once (nothing of the run is written yet). A second
    signal ends the process as the system would. (During training cptlab.training.callbacks.PreemptionCheckpoint takes
    these signals over: it checkpoints first.)"""

    def handle(signum, frame):
        name = signal.Signals(signum).name
        for other in names:
            if hasattr(signal, other):
                signal.signal(getattr(signal, other), signal.SIG_DFL)
        message = f"interrupted by {name}: re-run the same command to continue"
        if _in_job:
            raise Interrupted(message, name)
        print(f"{prog}: error: {message}", file=sys.stderr)
        sys.exit(128 + signum)

    for name in names:
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), handle)

"""Layer 7: the command-line front ends (cptlab-train, -prepare, -tokenizer, -compare, -export, -merge, the
demo). Nothing below imports them."""

import os
import sys
from typing import NoReturn

from cptlab.utils.console import one_line


def full_error() -> bool:
    """HYDRA_FULL_ERROR=1: the user asked for tracebacks (Hydra's own switch, honoured by every front end)."""
    return os.environ.get("HYDRA_FULL_ERROR") == "1"


def exit_with_error(prog: str, err: BaseException, message: str | None = None, status: int | None = None) -> NoReturn:
    """`prog: error: <one line>` on stderr and exit (`status`, else the error's own exit_status, else 2); under
    HYDRA_FULL_ERROR=1 the error is raised instead, traceback and all. Call it from an `except` block."""
    if full_error():
        raise err
    print(f"{prog}: error: {one_line(err) if message is None else message}", file=sys.stderr)
    sys.exit(status if status is not None else getattr(err, "exit_status", 2))


def exit_if_jobs_failed(prog: str, failed: list[str], what: str = "job(s)") -> None:
    """The end of a Hydra multirun whose failed jobs were recorded as they happened (the sweep went on): list them
    and exit 1; nothing when every job succeeded."""
    if failed:
        print(f"{prog}: {len(failed)} {what} failed:", file=sys.stderr)
        for line in failed:
            print(f"  {line}", file=sys.stderr)
        sys.exit(1)

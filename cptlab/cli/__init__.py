"""Layer 7: the command-line front ends (cptlab-train, -prepare, -tokenizer, -compare, -export, -merge, the
demo). Nothing below imports them."""

import sys


def exit_if_jobs_failed(prog: str, failed: list[str], what: str = "job(s)") -> None:
    """The end of a Hydra multirun whose failed jobs were recorded as they happened (the sweep went on): list them
    and exit 1; nothing when every job succeeded."""
    if failed:
        print(f"{prog}: {len(failed)} {what} failed:", file=sys.stderr)
        for line in failed:
            print(f"  {line}", file=sys.stderr)
        sys.exit(1)

"""`make demo`: build the demo base model if it is not cached, continue it on Chinese with English
replay, and print where the forgetting-curve plot, the report and the summary are."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from cptlab.config import run_name


def cache_dir() -> Path:
    return Path(os.environ.get("CPTLAB_CACHE", Path(os.environ.get("HOME", ".")) / ".cache" / "cptlab"))


def runs_dir() -> Path:
    return Path(os.environ.get("CPTLAB_RUNS", "runs"))


def train(*overrides: str) -> None:
    cmd = [sys.executable, "-m", "cptlab.train", *overrides]
    print("$ cptlab-train " + " ".join(overrides), flush=True)
    if subprocess.call(cmd) != 0:
        sys.exit(f"cptlab demo: `cptlab-train {' '.join(overrides)}` failed")


def main(argv: list[str] | None = None) -> None:
    extra = list(sys.argv[1:] if argv is None else argv)
    base = cache_dir() / "demo_base"
    if not (base / "config.json").is_file():
        print(f"demo base model not cached at {base}: building it (English tokenizer + small Llama)", flush=True)
        train("experiment=demo_base")
    run_dir = runs_dir() / "demo_zh" / run_name(",".join(extra))
    train("experiment=demo_zh", *extra, f"hydra.run.dir={run_dir}")
    summary = json.loads((run_dir / "summary.json").read_text())
    print("\ncptlab demo finished")
    for label, path in (("plot", summary["paths"].get("plot")), ("report", run_dir / "report.md"),
                        ("summary", run_dir / "summary.json"), ("metrics", summary["paths"]["metrics"])):
        print(f"  {label:<8} {path}")


if __name__ == "__main__":
    main()

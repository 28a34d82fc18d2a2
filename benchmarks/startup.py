"""5. Sweep overhead: a job's start-up, from launching the process to its first training step.

`python -m cptlab.cli.train_app experiment=demo_zh debug=smoke` is run twice as a subprocess, with a fresh cache
directory (CPTLAB_CACHE) shared by both and a fresh runs directory each: the first run is cold (it trains
the tokenizer and builds the token caches), the second warm (everything cached, as for every job of a
sweep after the first). The time to the first step is measured from just before the process is launched
until the run's metrics.csv first appears: the run writes it with the step-0 evaluation in
`on_train_start`, right before the first training step, after every start-up stage (interpreter and
imports, config compose and validation, tokenizer and token caches, model, Lightning set-up). The
directory is polled every 10 ms. (Quick mode stops each job there, and reads small local .txt slices of
the corpora with `data=files` instead of the demo corpora.)

Baselines: the import floor, a process that only imports what any Lightning + transformers training job
imports (`import pytorch_lightning, transformers; from transformers import LlamaForCausalLM`), and the same
for cptlab's own entry point (`import cptlab.cli.train_app`).

Breakdown (full mode): a third fresh process, on the warm caches, times each start-up stage of
`cptlab.cli.train_app.train()` separately: compose, validate, then `cptlab.run.build.build_run` (the one cptlab-train
calls), whose stages (tokenizer, base tokenizer, tokenizer stats, token caches, model, Lightning objects) it
times itself; fit is not run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import ROOT, BenchResult, Context, Ratio

FLOOR = "import pytorch_lightning, transformers; from transformers import LlamaForCausalLM"
POLL_S = 0.01


def _env(ctx: Context, runs: Path) -> dict:
    env = dict(os.environ)
    env.update(CPTLAB_CACHE=str(ctx.root / "startup_cache"), CPTLAB_RUNS=str(runs), CI="true",
               WANDB_MODE="offline", HF_HUB_OFFLINE="1")
    return env


def timed_process(cmd: list[str], env: dict | None = None) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd[:4])} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return seconds


def smoke_overrides(ctx: Context) -> list[str]:
    overrides = ["experiment=demo_zh", "debug=smoke", *ctx.sizes.startup_overrides]
    if ctx.sizes.startup_local_files:
        files = {}
        for name, docs in (("zh", ctx.zh_split[0][:300]), ("en", ctx.en_split[0][:300])):
            path = ctx.path("startup_data") / f"{name}.txt"
            if not path.exists():
                path.write_text("\n".join(" ".join(d.split("\n")) for d in docs) + "\n", encoding="utf-8")
            files[name] = path
        overrides += ["data=files", f"data.domains.new.sources=[{files['zh']}]",
                      f"data.domains.old.sources=[{files['en']}]"]
    return overrides


def _exists(root: Path, name: str) -> bool:
    """Whether a file `name` is under `root`, while the run writing there renames its temporary directories
    (a directory listed by the walk can vanish before it is entered: then look again at the next poll)."""
    try:
        return next(root.rglob(name), None) is not None
    except FileNotFoundError:
        return False


def smoke_run(ctx: Context, label: str) -> dict:
    runs = ctx.path("startup_runs", label)
    cmd = [sys.executable, "-m", "cptlab.cli.train_app", *smoke_overrides(ctx)]
    log = open(ctx.root / f"startup-{label}.log", "w")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=_env(ctx, runs), stdout=log, stderr=subprocess.STDOUT)
    first, stopped = None, False
    try:
        while proc.poll() is None:
            if first is None and _exists(runs, "metrics.csv"):
                first = time.perf_counter() - t0
                if ctx.sizes.quick:  # the caches are complete by now; the rest of the run is not measured
                    proc.kill()
                    proc.wait()
                    stopped = True
                    break
            time.sleep(POLL_S)
        total = time.perf_counter() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    if proc.returncode and not stopped:
        tail = (ctx.root / f"startup-{label}.log").read_text(errors="replace").strip().splitlines()[-3:]
        raise RuntimeError(f"smoke run ({label}) exited {proc.returncode}: {' | '.join(tail)}")
    summary_path = next(runs.rglob("summary.json"), None)
    summary = json.loads(summary_path.read_text()) if summary_path else {}
    if first is None:  # finished between two polls (cannot really happen: the run takes seconds after it)
        first = total
    return {"first_step_s": first, "process_s": None if stopped else total,
            "status": "stopped after the first step" if stopped else summary.get("status"),
            "summary_wall_time_s": summary.get("wall_time_s"),
            "train_tokens_per_s": summary.get("throughput", {}).get("tokens_per_sec"),
            "steps": summary.get("steps")}


def breakdown_child(overrides: list[str], output_dir: str) -> dict:
    """In a fresh process: the seconds of each start-up stage of one run, up to (not including) fit."""
    t0 = time.perf_counter()
    stages: dict[str, float] = {}

    def mark(name: str) -> None:
        nonlocal t0
        now = time.perf_counter()
        stages[name] = now - t0
        t0 = now

    import cptlab.cli.train_app  # noqa: F401  (everything the CLI imports)

    mark("import cptlab.cli.train_app")
    from pathlib import Path as _Path

    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    from cptlab.run.build import build_run
    from cptlab.run.validate import validate
    from cptlab.utils.console import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = output_dir
    mark("compose config")
    plan = validate(cfg)
    mark("validate")
    built = build_run(plan, _Path(output_dir), started=time.time())  # cptlab-train's own build, stage by stage
    stages.update(built.stages)
    return stages


def _breakdown(ctx: Context) -> dict:
    spec = {"overrides": smoke_overrides(ctx),
            "output_dir": str(ctx.path("startup_runs", "breakdown"))}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "benchmarks.startup", json.dumps(spec)], cwd=ROOT,
                          env=_env(ctx, ctx.root / "startup_runs"), capture_output=True, text=True, timeout=600)
    total = time.perf_counter() - t0
    if proc.returncode:
        return {"error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
    stages = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"process_s": total, "stages_s": stages,
            "interpreter_and_teardown_s": total - sum(stages.values())}


def run(ctx: Context) -> BenchResult:
    s = ctx.sizes
    res = BenchResult("startup")
    if s.quick:  # the floor alongside the cold run: quick numbers only show that the code runs
        import threading

        timings: list[float] = []
        thread = threading.Thread(target=lambda: timings.append(timed_process([sys.executable, "-c", FLOOR])))
        thread.start()
        cold = smoke_run(ctx, "cold")
        thread.join()
        if not timings:
            raise RuntimeError("the import-floor process failed")
        floor, cptlab_import = timings[0], None
    else:
        floor = min(timed_process([sys.executable, "-c", FLOOR]) for _ in range(2))
        cptlab_import = min(timed_process([sys.executable, "-c", "import cptlab.cli.train_app"]) for _ in range(2))
        cold = smoke_run(ctx, "cold")
    warm = smoke_run(ctx, "warm")
    breakdown = None if s.quick else _breakdown(ctx)
    res.details = {"command": "python -m cptlab.cli.train_app " + " ".join(smoke_overrides(ctx)),
                   "import_floor_s": floor, "import_cptlab_train_s": cptlab_import,
                   "cold": cold, "warm": warm,
                   "warm_overhead_over_floor_s": warm["first_step_s"] - floor, "warm_breakdown": breakdown}
    res.ratios.append(Ratio(
        "startup.warm_vs_cold", warm["first_step_s"] / cold["first_step_s"],
        f"warm caches {warm['first_step_s']:.1f} s to step 1", f"cold caches {cold['first_step_s']:.1f} s"))
    res.ratios.append(Ratio(
        "startup.warm_vs_import_floor", warm["first_step_s"] / floor,
        f"warm {warm['first_step_s']:.1f} s to step 1", f"import floor {floor:.1f} s"))
    return res


if __name__ == "__main__":
    _spec = json.loads(sys.argv[1])
    print(json.dumps(breakdown_child(_spec["overrides"], _spec["output_dir"])))

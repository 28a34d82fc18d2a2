"""Fabricated sweeps, laid out as Hydra and cptlab-train write them: run dirs with metrics.csv (the
Lightning CSV logger's separate train and eval rows), summary.json and .hydra/{overrides,config}.yaml."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

TOKENS_PER_STEP = 16 * 256  # batch_size * seq_len
COLUMNS = ["lr", "step", "train/loss", "train/replay_share", "train/tokens_per_sec", "trainer/tokens_seen",
           "val/en/bpb", "val/en/delta_bpb", "val/en/loss", "val/en/ppl",
           "val/zh/bpb", "val/zh/delta_bpb", "val/zh/loss", "val/zh/ppl"]

# replay ratio -> held-out bpb at the evals of steps 0, 50, 100 (zh = new, en = replay/old).
COMPLETED = {
    "0.1": {"zh": [3.0, 2.3, 2.0], "en": [1.5, 1.65, 1.7]},
    "0.25": {"zh": [3.0, 2.4, 2.1], "en": [1.5, 1.6, 1.56]},
    "0.5": {"zh": [3.0, 2.6, 2.5], "en": [1.5, 1.55, 1.58]},  # dominated by 0.25: forgets more, learns less
}


def write_metrics(run_dir: Path, evals: dict[str, list[float]], train_steps: list[int], every: int = 50) -> None:
    """Rows as CSVLogger writes them: eval rows (step 0 and every `every` steps) and train rows apart,
    the other columns left empty."""
    rows = []
    for i, _ in enumerate(next(iter(evals.values()))):
        step = i * every
        row = {"step": step, "trainer/tokens_seen": step * TOKENS_PER_STEP}
        for domain, values in evals.items():
            bpb = values[i]
            row |= {f"val/{domain}/bpb": bpb, f"val/{domain}/delta_bpb": bpb - values[0],
                    f"val/{domain}/loss": bpb * 2.5, f"val/{domain}/ppl": 2.718 ** (bpb * 2.5)}
        rows.append(row)
    for step in train_steps:
        rows.append({"step": step, "train/loss": 3.0 - step / 100, "train/tokens_per_sec": 20000.0 + step,
                     "train/replay_share": 0.25, "lr": 1e-3, "trainer/tokens_seen": step * TOKENS_PER_STEP})
    rows.sort(key=lambda r: (r["step"], "train/loss" in r))
    with open(run_dir / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def write_hydra(run_dir: Path, overrides: list[str], roles: dict[str, str] | None) -> None:
    (run_dir / ".hydra").mkdir(parents=True, exist_ok=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if roles is not None:
        config = {"name": "demo_zh", "seed": 0,
                  "paths": {"output_dir": "${hydra:runtime.output_dir}", "runs_dir": "runs"},
                  "data": {"seq_len": 256, "batch_size": 16, "replay_ratio": 0.25,
                           "domains": {d: {"role": r, "sources": [f"demo:{d}"], "heldout": 0.02}
                                       for d, r in roles.items()}}}
        (run_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def completed_summary(run_dir: Path, overrides: list[str], evals: dict[str, list[float]], ratio: float) -> dict:
    roles = {"zh": "new", "en": "replay"}
    return {
        "status": "completed", "error": None, "name": "demo_zh", "overrides": overrides,
        "steps": 100, "tokens_seen": 100 * TOKENS_PER_STEP, "replay_ratio": ratio, "replay_share": ratio,
        "final": {f"val/{d}/bpb": v[-1] for d, v in evals.items()} | {"train/loss": 2.0},
        "step0": {f"val/{d}/bpb": v[0] for d, v in evals.items()},
        "domains": {d: {"role": roles[d], "bpb_start": v[0], "bpb_end": v[-1], "delta_bpb": v[-1] - v[0]}
                    for d, v in evals.items()},
        "throughput": {"tokens_per_sec": 20000.0 + 1000 * ratio},
        "wall_time_s": 120.0 + ratio,
        "setup": {"tokenizer_s": 1.5, "data_s": 0.5 + ratio, "model_s": 2.0},
        "paths": {"run_dir": str(run_dir), "metrics": str(run_dir / "metrics.csv")},
    }


@pytest.fixture
def sweep(tmp_path) -> Path:
    """A replay-ratio sweep: 3 completed runs, 1 failed (diverged, lr also raised), 1 unfinished
    (metrics.csv up to step 60, no summary). Job dirs are numbered as Hydra's default subdir does."""
    root = tmp_path / "multirun" / "2025-01-01" / "12-00-00"
    root.mkdir(parents=True)
    (root / "multirun.yaml").write_text("hydra:\n  mode: MULTIRUN\n")
    roles = {"zh": "new", "en": "replay"}
    common = ["experiment=demo_zh", "trainer.max_steps=100"]
    jobs = []
    for job, (ratio, evals) in enumerate(COMPLETED.items()):
        jobs.append((job, [*common, f"data.replay_ratio={ratio}"], "completed", evals, list(range(10, 101, 10))))
    jobs.append((3, [*common, "data.replay_ratio=0.25", "optim.lr=10.0"], "failed",
                 {"zh": [3.0], "en": [1.5]}, [10]))
    jobs.append((4, [*common, "data.replay_ratio=0.75"], "unfinished",
                 {"zh": [3.0, 2.7], "en": [1.5, 1.52]}, list(range(10, 61, 10))))
    for job, overrides, status, evals, train_steps in jobs:
        run_dir = root / str(job)
        (run_dir / "checkpoints").mkdir(parents=True)  # a run's subdirectories must not count as runs
        (run_dir / "checkpoints" / "metrics.csv").write_text("step\n")
        # hydra.* overrides differ per job but say nothing about the run.
        write_hydra(run_dir, [*overrides, f"hydra.job.num={job}"], roles)
        write_metrics(run_dir, evals, train_steps)
        if status == "completed":
            summary = completed_summary(run_dir, overrides, evals, float(overrides[-1].split("=")[1]))
        elif status == "failed":
            summary = {"status": "failed", "error": "loss is NaN at step 12 (lr too high?)", "name": "demo_zh",
                       "overrides": overrides}
        else:
            continue
        (run_dir / "summary.json").write_text(json.dumps(summary))
    return root


# A replay-ratio x seed sweep whose end-of-run forgetting follows a known line: en Δbpb = 0.2 - 0.3 * ratio
# (within budget 0.05 from ratio 0.5 on), zh bpb at the end = 2.0 + 0.2 * ratio; seeds add -d, 0, +d.
SEED_RATIOS = (0.0, 0.25, 0.5, 0.75)
SEED_NOISE = {0: -0.01, 1: 0.0, 2: 0.01}


def seeded_forgetting(ratio: float) -> float:
    return 0.2 - 0.3 * ratio


def seeded_new_bpb(ratio: float) -> float:
    return 2.0 + 0.2 * ratio


def write_seeded_run(run_dir: Path, overrides: list[str], ratio: float, seed: int, *, heldout_sha: str = "docs",
                     blocks_sha: str = "blocks", shift: float = 0.0, en_start: float = 1.5) -> None:
    """One run of the seeded sweep (`shift` added to its en forgetting; `en_start`: its en bpb at step 0, the
    later values unchanged: a run that starts elsewhere and ends at the same bpb)."""
    noise = SEED_NOISE[seed]
    forgetting = seeded_forgetting(ratio) + shift
    evals = {"zh": [3.0, 2.5 + noise, seeded_new_bpb(ratio) + noise],
             "en": [en_start, 1.5 + forgetting / 2, 1.5 + forgetting + noise]}
    run_dir.mkdir(parents=True)
    write_hydra(run_dir, overrides, {"zh": "new", "en": "replay"})
    write_metrics(run_dir, evals, list(range(10, 101, 10)))
    summary = completed_summary(run_dir, overrides, evals, ratio)
    summary["split"] = {"split_seed": 0, "domains": {d: {"heldout_sha256": f"{heldout_sha}-{d}"} for d in evals}}
    summary["vocabulary"] = {"tokenizer_sha256": "tok"}
    for d in evals:
        summary["domains"][d]["eval_blocks_sha256"] = f"{blocks_sha}-{d}"
    (run_dir / "summary.json").write_text(json.dumps(summary))


@pytest.fixture
def seeded_sweep(tmp_path) -> Path:
    """`cptlab-train -m experiment=demo_zh data.replay_ratio=0,0.25,0.5,0.75 seed=0,1,2` as it lands on disk."""
    root = tmp_path / "runs" / "demo_zh" / "multirun"
    for ratio in SEED_RATIOS:
        for seed in SEED_NOISE:
            overrides = ["experiment=demo_zh", f"data.replay_ratio={ratio:g}", f"seed={seed}"]
            write_seeded_run(root / f"data.replay_ratio={ratio:g},seed={seed}", overrides, ratio, seed)
    return root


@pytest.fixture
def seeded_run():
    """write_seeded_run, for tests that add runs to the seeded sweep."""
    return write_seeded_run

"""For each run of the vocab_init study: the first evaluated step at which val/zh/bpb reaches the target, the
mean final zh bpb of the random-init runs (the question the study answers: does a better init get there
sooner?).

    python experiments/vocab_init/steps_to_target.py runs/studies/baseline runs/studies/vocab_init
"""

import sys
from pathlib import Path

from cptlab.rundir.metrics import read_series


def main(*sweep_dirs: str) -> None:
    runs = {p.name: read_series(p) for d in sweep_dirs for p in sorted(Path(d).iterdir())
            if (p / "metrics.csv").exists()}
    finals = [series["val/zh/bpb"][-1][1] for name, series in runs.items() if "init=random" in name]
    target = sum(finals) / len(finals)
    print(f"target: mean final val/zh/bpb of the {len(finals)} random-init runs = {target:.4f}\n")
    print("| run | zh bpb @ 0 | final zh bpb | first step with zh bpb <= target |")
    print("|---|---:|---:|---:|")
    for name, series in runs.items():
        curve = series["val/zh/bpb"]
        hit = next((step for step, value in curve if value <= target), None)
        print(f"| {name} | {curve[0][1]:.4f} | {curve[-1][1]:.4f} | {hit if hit is not None else 'not reached'} |")


if __name__ == "__main__":
    main(*sys.argv[1:])

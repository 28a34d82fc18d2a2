"""For each run of the vocab_init study: the first evaluated step at which val/zh/bpb reaches the final
zh bpb of the random-init run (the question the study answers).

    python experiments/vocab_init/steps_to_target.py runs/vocab_init
"""

import sys
from pathlib import Path

from cptlab.run.metrics import read_series


def main(sweep_dir: str) -> None:
    runs = {p.name: read_series(p) for p in sorted(Path(sweep_dir).iterdir()) if (p / "metrics.csv").exists()}
    random_run = next(name for name in runs if "init=random" in name)
    target = runs[random_run]["val/zh/bpb"][-1][1]
    print(f"target: final val/zh/bpb of {random_run} = {target:.4f}\n")
    print("| run | zh bpb @ 0 | final zh bpb | first step with zh bpb <= target |")
    print("|---|---:|---:|---:|")
    for name, series in runs.items():
        curve = series["val/zh/bpb"]
        hit = next((step for step, value in curve if value <= target), None)
        print(f"| {name} | {curve[0][1]:.4f} | {curve[-1][1]:.4f} | {hit if hit is not None else 'not reached'} |")


if __name__ == "__main__":
    main(sys.argv[1])

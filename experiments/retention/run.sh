#!/usr/bin/env bash
# Retention study at equal steps: no replay with none / ema / mean_teacher, against replay 0.05
# (the replay point comes from experiments/replay: same settings, so it is run there, not twice).
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS="${CPTLAB_RUNS:-runs}/studies/retention"
.venv/bin/cptlab-train -m experiment=demo_zh data.replay_ratio=0 retention=none,ema,mean_teacher \
    retention.on=all trainer.max_steps=100 eval.every_n_steps=20 hydra.sweep.dir="$RUNS"
REPLAY="${CPTLAB_RUNS:-runs}/studies/replay/data.replay_ratio=0.05,eval.every_n_steps=20,trainer.max_steps=100"
.venv/bin/cptlab-compare "$RUNS" "$REPLAY" --out experiments/retention/results

#!/usr/bin/env bash
# Replay study: share of English replay rows in every batch vs Chinese learning and English forgetting.
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS="${CPTLAB_RUNS:-runs}/studies/replay"
.venv/bin/cptlab-train -m experiment=demo_zh data.replay_ratio=0,0.05,0.25,0.5 \
    trainer.max_steps=100 eval.every_n_steps=20 hydra.sweep.dir="$RUNS"
.venv/bin/cptlab-compare "$RUNS" --out experiments/replay/results

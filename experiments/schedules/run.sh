#!/usr/bin/env bash
# Learning-rate schedule study for continued pre-training: cosine with re-warm-up vs
# warm-up-stable-decay vs constant, at replay 0.25.
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS="${CPTLAB_RUNS:-runs}/studies/schedules"
.venv/bin/cptlab-train -m experiment=demo_zh optim.schedule=cosine,wsd,constant \
    trainer.max_steps=100 eval.every_n_steps=20 hydra.sweep.dir="$RUNS"
.venv/bin/cptlab-compare "$RUNS" --out experiments/schedules/results

#!/usr/bin/env bash
# The demo study of `make sweep`: replay ratio {0, 0.25} x LoRA rank {4, 16} on demo_zh_lora
# (extended vocabulary, two-stage LoRA with trainable new-token rows), 150 steps per point, then
# cptlab-compare; the report is copied here.
set -euo pipefail
cd "$(dirname "$0")/../.."
/usr/bin/time -f "make sweep: %e s wall" make sweep
cp "${CPTLAB_RUNS:-runs}"/replay_sweep/multirun/compare/{summary.md,summary.csv,forgetting_curves.png,tradeoff.png} \
    experiments/replay_sweep/results/

#!/usr/bin/env bash
# The demo study of `make sweep`: replay ratio {0, 0.25} x LoRA rank {4, 16} on demo_zh_lora
# (extended vocabulary, two-stage LoRA with trainable new-token rows), 150 steps per point, then
# cptlab-compare; the comparison is redone here with each run's record archived (on en_eval, English the runs
# never train on, and on the replay text en), so experiments.check recomputes it.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN="${CPTLAB_BIN:-.venv/bin}"
/usr/bin/time -f "make sweep: %e s wall" make sweep
for old in en_eval en; do
    "$BIN/cptlab-compare" "${CPTLAB_RUNS:-runs}"/replay_sweep/multirun --old "$old" --new zh --archive \
        --out "experiments/replay_sweep/results/$old"
done

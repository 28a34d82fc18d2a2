#!/usr/bin/env bash
# How much English replay buys how much less forgetting, at what cost in Chinese: data.replay_ratio in
# {0, 0.05, 0.25 (the baseline), 0.5}, 5 seeds each (seeds 3 and 4 in sweeps of their own, so the studies that
# share the baseline keep seeds 0-2), compared with no replay (the reference row) on English the
# runs never train on (results/en_eval) and on the replay text itself (results/en), each with the smallest ratio
# that keeps that domain's forgetting within 0.05 bpb (--budget); and once more against the 25% baseline
# (results/vs_baseline/), whether 5% or 50% differ from the default.
source "$(dirname "$0")/../lib.sh"
study_runs baseline                                   # replay 0.25 (the demo_zh default)
study_runs replay data.replay_ratio=0,0.05,0.5
SEEDS=3,4 study_runs baseline_seeds34
SEEDS=3,4 study_runs replay_seeds34 data.replay_ratio=0,0.05,0.5
for old in en_eval en; do
    "$BIN/cptlab-compare" "$RUNS"/replay*/*replay_ratio=0,* "$RUNS"/replay*/*replay_ratio=0.05,* \
        "$RUNS"/baseline "$RUNS"/baseline_seeds34 "$RUNS"/replay*/*replay_ratio=0.5,* --reference data.replay_ratio=0 \
        --old "$old" --new zh --budget "$old=0.05" --archive --out "experiments/replay/results/$old"
    "$BIN/cptlab-compare" "$RUNS"/replay*/*replay_ratio=0.05,* "$RUNS"/baseline "$RUNS"/baseline_seeds34 \
        "$RUNS"/replay*/*replay_ratio=0.5,* --reference demo_zh --old "$old" --new zh --archive \
        --out "experiments/replay/results/vs_baseline/$old"
done

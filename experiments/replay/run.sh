#!/usr/bin/env bash
# Replay study: share of English replay rows in every batch vs Chinese learning and English forgetting,
# 3 seeds per point; --budget en=0.05 names the smallest ratio expected to keep forgetting within 0.05 bpb.
source "$(dirname "$0")/../lib.sh"
study_runs baseline                                   # replay 0.25 (the demo_zh default)
study_runs replay data.replay_ratio=0,0.05,0.5
study_compare replay "$RUNS/baseline" "$RUNS/replay" --budget en=0.05

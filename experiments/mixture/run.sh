#!/usr/bin/env bash
# Mixture study (#29), 3 seeds per arm, 100 steps each (experiments/lib.sh):
#   1. document masking (data.doc_masking=true: positions restart and attention stops at each document inside a
#      block, in training and evaluation) vs packing across documents (the baseline);
#   2. a WSD run whose decay (the last 20 steps) anneals on 50% replay after 25% (experiment=demo_zh_anneal:
#      0.25 x 80 + 0.5 x 20 = 30 replay rows in 100) vs a constant 30% mix on the same WSD schedule: the same
#      replay tokens in total, spent at a different time.
# Each comparison twice: forgetting on English the run never trains on (en_eval), then on the replay text (en).
source "$(dirname "$0")/../lib.sh"
study_runs baseline                                   # shared with the other studies
study_runs doc_masking data.doc_masking=true
study_runs constant_mix optim.schedule=wsd data.replay_ratio=0.3
EXPERIMENT=demo_zh_anneal study_runs anneal
for old in en_eval en; do
    "$BIN/cptlab-compare" "$RUNS/baseline" "$RUNS/doc_masking" --old "$old" --new zh --archive \
        --out experiments/mixture/results/doc_masking/"$old"
    "$BIN/cptlab-compare" "$RUNS/constant_mix" "$RUNS/anneal" --old "$old" --new zh --archive \
        --out experiments/mixture/results/anneal/"$old"
done

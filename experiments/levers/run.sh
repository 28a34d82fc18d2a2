#!/usr/bin/env bash
# All levers on one trade-off plot, same seeds, steps, data and peak LR: full fine-tuning (the baseline),
# LoRA r=8, block expansion (2 blocks) and LoRA r=64 (934k trainable parameters against block expansion's 886k:
# the matched comparison; r=8 trains 117k), new rows only, embeddings and output matrix at 0.1x LR, EMA
# (decay 0.99), replay 5% instead of 25%, and the WiSE-FT merge curve of the full run (cptlab-merge).
source "$(dirname "$0")/../lib.sh"
study_runs baseline
study_runs replay data.replay_ratio=0,0.05,0.5        # shared with the replay study; 0.05 is used here
study_runs lora adapter=lora adapter.train_new_tokens=true
study_runs expand adapter=block_expansion adapter.train_new_tokens=true
study_runs lora_r64 adapter=lora adapter.train_new_tokens=true adapter.r=64 adapter.alpha=128   # shared with lora_rank/
study_runs new_rows schedule=new_tokens_only
study_runs lr_scale optim.lr_scale.embeddings=0.1 optim.lr_scale.lm_head=0.1
study_runs ema retention=ema
for run in "$RUNS"/baseline/*/; do
    [ -f "$run/merge.json" ] || "$BIN/cptlab-merge" "$run"
done
study_compare_en levers/results "$RUNS/baseline" "$RUNS"/replay/*replay_ratio=0.05* "$RUNS/lora" "$RUNS/expand" "$RUNS/lora_r64" \
    "$RUNS/new_rows" "$RUNS/lr_scale" "$RUNS/ema"
study_compare_en levers/results/matched "$RUNS/expand" "$RUNS/lora_r64"   # equal trainable weights

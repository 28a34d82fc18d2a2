#!/usr/bin/env bash
# LoRA vs full fine-tuning at matched LR, steps, data and replay (Biderman et al. 2024, "LoRA learns less and
# forgets less"): LoRA on every projection plus the new token rows at r = 4, 8 (the levers study's arm) and 64,
# alpha = 2r (the scale alpha/r stays 2 at every rank), against the full fine-tuning baseline; 3 seeds each.
# (r = 256 is not run: at or above the model width of 192 LoRA is a full-rank update, not the paper's regime.)
# The paper tunes the LR per method, so both arms also run at a second LR: LoRA r=8 at 4e-3, full fine-tuning at
# 2e-3 and 4e-3 (the schedules study's re-warm arms), compared at the matched LR of 4e-3 in results/lr_4e-3.
source "$(dirname "$0")/../lib.sh"
study_runs baseline
study_runs lora adapter=lora adapter.train_new_tokens=true          # r=8, alpha=16 (shared with levers/)
study_runs lora_r4 adapter=lora adapter.train_new_tokens=true adapter.r=4 adapter.alpha=8
study_runs lora_r64 adapter=lora adapter.train_new_tokens=true adapter.r=64 adapter.alpha=128
study_runs lora_lr adapter=lora adapter.train_new_tokens=true optim.lr=4e-3
study_runs rewarm optim.lr=2e-3,4e-3                                # shared with schedules/
study_compare_en lora_rank/results "$RUNS/baseline" "$RUNS/lora_r4" "$RUNS/lora" "$RUNS/lora_r64"
# rank against rank: r = 4 and 64 against r = 8 (the row labelled demo_zh: adapter=lora's default rank)
study_compare_en lora_rank/results/ranks "$RUNS/lora_r4" "$RUNS/lora" "$RUNS/lora_r64"
study_compare_en lora_rank/results/lr_4e-3 "$RUNS"/rewarm/*lr=0.004* "$RUNS/lora_lr"
# each arm's second LR against its first: LoRA r=8 at 4e-3 against 1e-3, full fine-tuning at 4e-3 against 1e-3
study_compare_en lora_rank/results/lora_lr "$RUNS/lora" "$RUNS/lora_lr"
study_compare_en lora_rank/results/full_lr "$RUNS/baseline" "$RUNS"/rewarm/*lr=0.004*

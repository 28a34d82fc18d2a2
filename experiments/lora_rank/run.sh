#!/usr/bin/env bash
# LoRA vs full fine-tuning at matched LR, steps, data and replay (Biderman et al. 2024, "LoRA learns less and
# forgets less"): LoRA on every projection plus the new token rows at r = 4, 8 (the levers study's arm), 64 and
# 256, alpha = 2r (the scale alpha/r stays 2 at every rank), against the full fine-tuning baseline; 3 seeds each.
source "$(dirname "$0")/../lib.sh"
study_runs baseline
study_runs lora adapter=lora adapter.train_new_tokens=true          # r=8, alpha=16 (shared with levers/)
study_runs lora_r4 adapter=lora adapter.train_new_tokens=true adapter.r=4 adapter.alpha=8
study_runs lora_r64 adapter=lora adapter.train_new_tokens=true adapter.r=64 adapter.alpha=128
study_runs lora_r256 adapter=lora adapter.train_new_tokens=true adapter.r=256 adapter.alpha=512
study_compare lora_rank "$RUNS/baseline" "$RUNS/lora_r4" "$RUNS/lora" "$RUNS/lora_r64" "$RUNS/lora_r256"

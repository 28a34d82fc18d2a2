#!/usr/bin/env bash
# Re-warming (Gupta et al. 2023; Ibrahim et al. 2024) and schedule shape, 3 seeds per point. The demo base
# ended its cosine at 2e-4 (peak 2e-3 x min_lr_ratio 0.1): no re-warm continues at that LR, constant; the
# re-warmed arms warm up for 20 steps to 0.5x (the baseline, 1e-3), 1x and 2x the base's peak, then cosine;
# wsd re-warms to 1e-3 and holds it until the last 20% of the steps.
source "$(dirname "$0")/../lib.sh"
study_runs baseline
study_runs no_rewarm optim.lr=2e-4 optim.schedule=constant optim.warmup_steps=0
study_runs rewarm optim.lr=2e-3,4e-3
study_runs wsd optim.schedule=wsd
study_compare_en schedules/results "$RUNS/no_rewarm" "$RUNS/baseline" "$RUNS/rewarm" "$RUNS/wsd"
# the steps beyond the baseline's peak: 2x and WSD at 0.5x against a re-warm to 1x
study_compare_en schedules/results/vs_1x "$RUNS/rewarm" "$RUNS/wsd" --reference optim.lr=0.002

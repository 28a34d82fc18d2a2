#!/usr/bin/env bash
# Retention at equal steps and no replay: none (the replay study's ratio-0 arm), EMA at decays 0.9 / 0.95 /
# 0.97 / 0.99 / 0.999, mean teacher (KL to the EMA on all rows) at weights 0.3 / 1 / 3, against replay 5% (from
# the replay study), 3 seeds each.
source "$(dirname "$0")/../lib.sh"
study_runs replay data.replay_ratio=0,0.05,0.5        # shared with the replay study
study_runs retention data.replay_ratio=0 retention=ema,mean_teacher retention.on=all
study_runs ema_decay data.replay_ratio=0 retention=ema retention.decay=0.9,0.95,0.97,0.999
study_runs teacher_weight data.replay_ratio=0 retention=mean_teacher retention.on=all retention.weight=0.3,3
study_compare_en retention/results "$RUNS"/replay/*replay_ratio=0,* "$RUNS"/replay/*replay_ratio=0.05,* \
    "$RUNS/retention" "$RUNS/ema_decay" "$RUNS/teacher_weight"

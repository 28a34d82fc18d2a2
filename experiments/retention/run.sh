#!/usr/bin/env bash
# Retention without replay, at equal steps: an EMA of the weights at decays 0.9 / 0.99 (the default) / 0.999
# (averages over about 10 / 100 / 1,000 updates of a 100-step run), and mean teacher (KL to the EMA on all rows)
# at weights 0.3 / 1 (the default) / 3, against no replay and 5% replay (the replay study's arms). The defaults
# run 5 seeds (no replay's forgetting spreads widely over seeds), the decay and weight sweeps 3. An EMA run has
# two rows: its raw weights, trained exactly as no replay, and "· EMA weights".
source "$(dirname "$0")/../lib.sh"
study_runs replay data.replay_ratio=0,0.05,0.5                       # shared with the replay study
SEEDS=3,4 study_runs replay_seeds34 data.replay_ratio=0,0.05,0.5    # shared with the replay study
study_runs retention data.replay_ratio=0 retention=ema,mean_teacher retention.on=all
SEEDS=3,4 study_runs retention_seeds34 data.replay_ratio=0 retention=ema,mean_teacher retention.on=all
study_runs ema_decay data.replay_ratio=0 retention=ema retention.decay=0.9,0.999
study_runs teacher_weight data.replay_ratio=0 retention=mean_teacher retention.on=all retention.weight=0.3,3
# One table per question, each its own Holm family: the defaults (5 seeds) against no replay (results/), then
# against 5% replay (vs_replay/); the EMA decay (ema_decay/) and the mean-teacher weight (teacher_weight/)
# against no replay, on seeds 0-2.
defaults=("$RUNS"/replay*/*replay_ratio=0,* "$RUNS"/replay*/*replay_ratio=0.05,* "$RUNS"/retention*/*/)
study_compare_en retention/results "${defaults[@]}"
study_compare_en retention/results/vs_replay "${defaults[@]}" --reference data.replay_ratio=0.05
none=("$RUNS"/replay/*replay_ratio=0,*)
study_compare_en retention/results/ema_decay "${none[@]}" "$RUNS/retention"/*retention=ema,* "$RUNS/ema_decay"
study_compare_en retention/results/teacher_weight "${none[@]}" "$RUNS/retention"/*retention=mean_teacher,* \
    "$RUNS/teacher_weight"

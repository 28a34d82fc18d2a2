#!/usr/bin/env bash
# New-row initialisation (random / mean / subword_mean, the baseline) on absolute bpb, 3 seeds each, and the
# extension itself against the base tokenizer at equal bytes of Chinese text: the base spells Chinese in
# 2.932 tokens/char against the extension's 0.780 (3.76x), so its run takes 377 steps to read as much.
source "$(dirname "$0")/../lib.sh"
study_runs baseline
study_runs vocab_init tokenizer.init=random,mean
STEPS=377 study_runs vocab_base tokenizer=base
study_compare_en vocab_init/results "$RUNS/baseline" "$RUNS/vocab_init" "$RUNS/vocab_base"
study_compare_en vocab_init/results/mean_vs_random "$RUNS/vocab_init"   # the two inits alone: random - mean
# from the archived records, so it recomputes from the repository alone
ARCHIVE=experiments/vocab_init/results/en_eval/runs
"$BIN/python" experiments/vocab_init/steps_to_target.py "$ARCHIVE/baseline" "$ARCHIVE/vocab_init" \
    > experiments/vocab_init/results/steps_to_target.md

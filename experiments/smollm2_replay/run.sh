#!/usr/bin/env bash
# Real base: SmolLM2-135M (make install-real) continued on Chinese with 0% vs 25% English replay, 3 seeds each
# (experiment=smollm2_zh, 60 steps), scored on the replay domain (en), on English prose it never trains on
# (en_eval, role: eval) and on three offline multiple-choice probes. The probes are scored at step 0 and at the
# end only, on 48 items each: every harness evaluation costs SmolLM2 several minutes on 2 CPU cores.
source "$(dirname "$0")/../lib.sh"
"$BIN/cptlab-train" -m experiment=smollm2_zh data.replay_ratio=0,0.25 "seed=$SEEDS" \
    'eval.harness.tasks=[cptlab_en_word_order,cptlab_zh_char_order,cptlab_zh_polarity]' \
    eval.harness.every_n_steps=60 eval.harness.limit=48 hydra.sweep.dir="$RUNS/smollm2_replay"
# Forgetting on English it never trains on (the finding), then on the replayed English itself.
study_compare smollm2_replay "$RUNS/smollm2_replay" --old en_eval --new zh
"$BIN/cptlab-compare" "$RUNS/smollm2_replay" --old en --new zh --archive --out experiments/smollm2_replay/results/replay_text

#!/usr/bin/env bash
# Vocabulary-extension init study: random vs mean vs subword_mean new embedding rows on demo_zh.
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS="${CPTLAB_RUNS:-runs}/studies/vocab_init"
.venv/bin/cptlab-train -m experiment=demo_zh tokenizer.init=random,mean,subword_mean \
    trainer.max_steps=100 eval.every_n_steps=10 hydra.sweep.dir="$RUNS"
.venv/bin/cptlab-compare "$RUNS" --out experiments/vocab_init/results
.venv/bin/python experiments/vocab_init/steps_to_target.py "$RUNS" | tee experiments/vocab_init/results/steps_to_target.md

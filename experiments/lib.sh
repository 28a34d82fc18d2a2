# Shared by the studies' run.sh: every study point is experiment=demo_zh for 100 steps x 4,096 tokens,
# evaluated every 20 steps, over the seeds $SEEDS (default 0,1,2), so arms shared between studies (the
# baseline: full fine-tuning, 25% replay, cosine re-warmed to 1e-3, subword_mean rows) run once.
# Re-running a study skips the points already completed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
RUNS="${CPTLAB_RUNS:-runs}/studies"
SEEDS="${SEEDS:-0,1,2}"
BIN="${CPTLAB_BIN:-.venv/bin}"

# study_runs NAME OVERRIDES...: one multirun (the overrides' product x the seeds) in $RUNS/NAME; STEPS=N
# changes the run length (default 100), EXPERIMENT=NAME the experiment (default demo_zh).
study_runs() {
    local name=$1
    shift
    "$BIN/cptlab-train" -m "experiment=${EXPERIMENT:-demo_zh}" "trainer.max_steps=${STEPS:-100}" eval.every_n_steps=20 \
        "seed=$SEEDS" "$@" hydra.sweep.dir="$RUNS/$name"
}

# study_compare STUDY DIRS... [cptlab-compare options]: the study's results/ from those sweeps, with each run's
# record archived in results/runs (summary.json, metrics.csv, config) so `python -m experiments.check` recomputes
# every figure from the repository alone.
study_compare() {
    local study=$1
    shift
    "$BIN/cptlab-compare" "$@" --archive --out "experiments/$study/results"
}

# study_compare_en OUT DIRS... [cptlab-compare options]: the comparison once per English domain, forgetting of
# en_eval (English the runs never train on: the measure of forgetting) and of en (the replay text itself), Chinese
# as the new domain, each archived in experiments/OUT/<domain>.
study_compare_en() {
    local out=$1
    shift
    for old in en_eval en; do
        "$BIN/cptlab-compare" "$@" --old "$old" --new zh --archive --out "experiments/$out/$old"
    done
}

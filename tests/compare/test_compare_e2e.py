"""The contract end to end: `cptlab-train -m ... seed=0,1,2` then `cptlab-compare` gives one row with
mean ± interval over the three seeds, and all three runs were scored on identical held-out documents."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# A tiny, fast configuration given explicitly (not through a debug preset, whose sizes may change).
TINY = ["model=tiny", "tokenizer=train", "tokenizer.vocab_size=1200", "tokenizer.character_coverage=0.98",
        "data=demo_zh", "data.max_docs=300", "data.seq_len=32", "data.batch_size=4", "trainer.max_steps=2",
        "trainer.log_every_n_steps=1", "optim.warmup_steps=0", "eval.every_n_steps=2", "eval.max_blocks=4",
        "checkpoint.every_n_steps=2", "logger=csv", "publish_dir=null"]


def run(module, *args):
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)


def test_seeds_of_one_configuration_are_one_row_scored_on_the_same_documents(tmp_path):
    sweep = tmp_path / "sweep"
    train = run("cptlab.cli.train_app", "-m", *TINY, "seed=0,1,2", f"hydra.sweep.dir={sweep}")
    assert train.returncode == 0, train.stderr[-3000:]
    summaries = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/summary.json"))]
    assert len(summaries) == 3 and {s["status"] for s in summaries} == {"completed"}
    for domain in ("zh", "en"):
        # The same held-out documents (data.split_seed, not seed, keys the split), the same tokenizer and
        # the same eval blocks in every run.
        assert len({s["split"]["domains"][domain]["heldout_sha256"] for s in summaries}) == 1
        assert len({s["domains"][domain]["eval_blocks_sha256"] for s in summaries}) == 1
        assert {s["domains"][domain]["eval_blocks"] for s in summaries} == {4}
        for s in summaries:  # the final evaluation's per-block sums: the bootstrap over blocks resamples them
            record = s["eval_block_sums"][domain]
            assert len(record["nll_bits"]) == len(record["bytes"]) == 4 and record["available"] >= 4
            bpb = sum(record["nll_bits"]) / sum(record["bytes"])
            assert bpb == pytest.approx(s["domains"][domain]["bpb_end"], rel=1e-7)
    assert {s["split"]["split_seed"] for s in summaries} == {0}
    assert len({s["vocabulary"]["tokenizer_sha256"] for s in summaries}) == 1
    # ... while the seed did change the initialisation: the step-0 scores differ.
    assert len({s["step0"]["val/en/bpb"] for s in summaries}) == 3

    compare = run("cptlab.cli.compare", sweep)
    assert compare.returncode == 0, compare.stderr
    assert "warning" not in compare.stderr
    with open(sweep / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1
    row = rows[0]
    assert (row["status"], row["n"], row["seeds"]) == ("completed", "3", "0,1,2")
    assert float(row["forgetting_ci95"]) > 0 and float(row["new_bpb_ci95"]) > 0
    ends = [s["domains"]["zh"]["bpb_end"] for s in summaries]
    assert float(row["new_bpb"]) == sum(ends) / 3 or abs(float(row["new_bpb"]) - sum(ends) / 3) < 1e-9
    assert " ± " in compare.stdout and "(+2 seeds)" in compare.stdout
    assert float(row["new_bpb_eval_ci95"]) > 0 and float(row["old_bpb_eval_ci95"]) > 0  # ± eval, beside the seeds'
    assert "zh: evaluation noise ± " in compare.stdout and "at 4 blocks" in compare.stdout

"""A diverged run is never reported as completed: train.nan_policy=skip_batch gives up after
train.max_consecutive_skipped skipped batches in a row, train.nan_policy=stop says whether a good checkpoint
exists, and cptlab-export refuses non-finite weights."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

DIVERGE = ["optim.lr=1e30", "trainer.max_steps=20", "eval.every_n_steps=100", "checkpoint.every_n_steps=100"]


@pytest.fixture(scope="module")
def corpora(tmp_path_factory, rel):
    d = tmp_path_factory.mktemp("diverge")
    return rel.write_corpus(d / "new.txt", 200, 0), rel.write_corpus(d / "old.txt", 200, 1, " old"), d


def test_skip_batch_gives_up_and_the_run_fails(corpora, cptlab_train, tmp_path, rel):
    new, old, _ = corpora
    run_dir = tmp_path / "run"
    proc = cptlab_train(*rel.tiny_run(new, old, run_dir, *DIVERGE, "train.nan_policy=skip_batch"))
    line = rel.error_line(proc)
    assert "train.nan_policy=skip_batch gave up" in line and "train.max_consecutive_skipped=5" in line
    assert "no checkpoint was written before it" in line
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and "gave up" in summary["error"]
    assert not (run_dir / "checkpoints" / "last.ckpt").exists()


def test_stop_says_that_no_good_checkpoint_exists(corpora, cptlab_train, tmp_path, rel):
    new, old, _ = corpora
    run_dir = tmp_path / "run"
    line = rel.error_line(cptlab_train(*rel.tiny_run(new, old, run_dir, *DIVERGE)))
    assert "stopped by train.nan_policy=stop" in line or "non-finite weights" in line, line
    assert "no checkpoint was written before it" in line and "last good state" not in line
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "failed"


def test_export_refuses_non_finite_weights(corpora, cptlab_train, tmp_path, rel):
    import torch

    new, old, _ = corpora
    run_dir = tmp_path / "run"
    proc = cptlab_train(*rel.tiny_run(new, old, run_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    key = next(k for k, v in state["state_dict"].items() if v.is_floating_point())
    state["state_dict"][key][0, 0] = float("nan")
    torch.save(state, ckpt)
    out = tmp_path / "export"
    export = subprocess.run([sys.executable, "-m", "cptlab.cli.export", str(run_dir), "--out", str(out)],
                            capture_output=True, text=True, timeout=300)
    line = rel.error_line(export, prog="cptlab-export")
    assert "non-finite weights" in line and str(ckpt) in line
    assert not out.exists()


def test_skip_limits_count_consecutive_and_total_skips():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from cptlab.errors import CptlabError
    from cptlab.training.module import CPTModule
    from cptlab.training.schedule import LRSchedule

    class Trainer:
        global_step, world_size, checkpoint_callback = 0, 1, None

    model = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2))
    m = CPTModule(model, lr=1e-3, weight_decay=0.0, betas=[0.9, 0.95], eps=1e-8, schedule=LRSchedule(total_steps=10),
                  nan_policy="skip_batch", max_consecutive_skipped=3, max_skipped_batches=4)
    m._trainer = Trainer()
    ids = torch.randint(0, 32, (2, 9))

    def step(i, bad):
        with torch.no_grad():
            model.lm_head.weight[0, 0] = float("nan") if bad else 0.0
        return m.training_step({"input_ids": ids[:, :-1], "targets": ids[:, 1:], "step": i, "rows": 2,
                                "replay_rows": 0}, i)

    pattern = [True, True, False, True, True, False]  # never 3 in a row, 4 in all after the fifth batch
    for i, bad in enumerate(pattern[:4]):
        assert (step(i, bad) is None) == bad
    assert m.consecutive_skipped == 1 and m.skipped_batches == 3
    with pytest.raises(CptlabError, match=r"gave up at batch 4: 2 non-finite losses in a row, 4 in all"):
        step(4, True)

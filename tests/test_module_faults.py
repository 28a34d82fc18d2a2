"""A non-finite loss stops the run (train.nan_policy=stop) or skips the batch (skip_batch)."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from cptlab.errors import CptlabError
from cptlab.training.module import CPTModule
from cptlab.training.schedule import LRSchedule


class Trainer:
    global_step = 3
    world_size = 1


def module(policy):
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2))
    m = CPTModule(model, lr=1e-3, weight_decay=0.0, betas=[0.9, 0.95], eps=1e-8,
                  schedule=LRSchedule(total_steps=10), nan_policy=policy)
    m._trainer = Trainer()
    with torch.no_grad():
        model.lm_head.weight[0, 0] = float("nan")
    return m


def batch():
    ids = torch.randint(0, 32, (2, 9))
    return {"input_ids": ids[:, :-1], "targets": ids[:, 1:], "step": 0, "rows": 2, "replay_rows": 0,
            "is_replay": torch.zeros(2, dtype=torch.bool)}


def test_stop_policy_fails_with_a_clear_message_at_the_next_check():
    m = module("stop")
    m.check_finite()  # nothing seen yet
    m.training_step(batch(), 0)  # no host sync in the step: the bad batch is noted on the device
    assert int(m.first_nonfinite) == 0
    with pytest.raises(CptlabError, match=r"non-finite train loss at batch 0 .* train.nan_policy=stop"):
        m.check_finite()
    with pytest.raises(CptlabError, match="non-finite"):  # and no checkpoint is written from these weights
        m.on_save_checkpoint({"state_dict": {}})


def test_stop_policy_names_the_first_bad_batch():
    m = module("stop")
    with torch.no_grad():
        m.model.lm_head.weight[0, 0] = 0.0
    for i in range(3):
        b = batch()
        b["step"] = i
        if i == 1:
            with torch.no_grad():
                m.model.lm_head.weight[0, 0] = float("nan")
        m.training_step(b, i)
    assert int(m.first_nonfinite) == 1


def test_skip_batch_policy_skips_and_counts_but_keeps_the_stream_in_step():
    m = module("skip_batch")
    assert m.training_step(batch(), 0) is None
    assert m.skipped_batches == 1 and m.batches_done == 1 and m.loss_count == 0

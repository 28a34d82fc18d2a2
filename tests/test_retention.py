"""EMA equals a hand-computed average and survives a checkpoint round trip; the mean-teacher loss is
zero when teacher == student and positive otherwise."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from cptlab.errors import CptlabError
from cptlab.retention.ema import EMA
from cptlab.retention.teacher import MeanTeacher, kl_teacher_student


def tiny_model(seed=0):
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)
    return LlamaForCausalLM(cfg)


def test_ema_is_the_hand_computed_average_after_k_updates():
    model = tiny_model()
    ema = EMA(decay=0.9)
    ema.init_from(model)
    name = "model.embed_tokens.weight"
    p = dict(model.named_parameters())[name]
    expected = p.detach().clone()
    for k in range(3):
        with torch.no_grad():
            p.add_(0.5 * (k + 1))
        expected = 0.9 * expected + 0.1 * p.detach()
        ema.update(model)
    assert torch.allclose(ema.shadow[name], expected, atol=1e-6)


def test_ema_state_round_trips_and_swap_restores_weights_bitwise():
    model = tiny_model()
    ema = EMA(decay=0.5)
    ema.init_from(model)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(2)
    ema.update(model)
    checkpoint = {}
    ema.on_save_checkpoint(None, None, checkpoint)
    assert set(checkpoint["cptlab"]["ema"]["state_dict"]) == {"model." + n for n in ema.shadow}
    restored = EMA(decay=0.5)
    restored.on_load_checkpoint(None, None, checkpoint)
    assert all(torch.equal(restored.shadow[n], t) for n, t in ema.shadow.items())
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with restored.swapped(model):
        assert torch.equal(dict(model.named_parameters())["lm_head.weight"], ema.shadow["lm_head.weight"])
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())


def test_kl_is_zero_for_identical_and_positive_for_different_logits():
    logits = torch.randn(2, 5, 7)
    assert kl_teacher_student(logits, logits).item() == pytest.approx(0.0, abs=1e-7)
    assert kl_teacher_student(logits, torch.randn(2, 5, 7)).item() > 0


def test_mean_teacher_loss_zero_when_teacher_is_student_positive_after_drift():
    model = tiny_model()
    ema = EMA(decay=0.99)
    ema.init_from(model)
    batch = {"input_ids": torch.randint(0, 50, (4, 6)), "is_replay": torch.tensor([True, False, True, False])}
    teacher = MeanTeacher(ema, on="replay")
    student = model(input_ids=batch["input_ids"]).logits
    assert teacher(model, batch, student).item() == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad():
        dict(model.named_parameters())["lm_head.weight"].add_(torch.randn(50, 16))  # not a uniform shift: softmax ignores those
    student = model(input_ids=batch["input_ids"]).logits
    assert teacher(model, batch, student).item() > 1e-4
    assert MeanTeacher(ema, on="new")(model, {**batch, "is_replay": torch.ones(4, dtype=torch.bool)},
                                      student).item() == 0.0


def test_unknown_rows_option_names_the_key():
    with pytest.raises(CptlabError, match="retention.on"):
        MeanTeacher(EMA(0.9), on="old")

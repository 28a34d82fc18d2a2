"""EMA equals a hand-computed average and survives a checkpoint round trip; the mean-teacher loss is
zero when teacher == student and positive otherwise."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from cptlab.training.retention.ema import EMA
from cptlab.training.retention.teacher import MeanTeacher, kl_teacher_student


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


def test_kl_is_teacher_to_student_by_hand():
    """KL(p_t || p_s) = sum p_t log(p_t / p_s), not the reverse (which differs on these logits)."""
    import math

    t, s = [4.0, 0.0, 0.0], [0.0, 0.0, 0.0]

    def probs(z):
        e = [math.exp(v) for v in z]
        return [v / sum(e) for v in e]

    p, q = probs(t), probs(s)
    forward = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    reverse = sum(qi * math.log(qi / pi) for pi, qi in zip(p, q))
    assert abs(forward - reverse) > 0.1
    got = kl_teacher_student(torch.tensor([[t]]), torch.tensor([[s]])).item()
    assert got == pytest.approx(forward, rel=1e-5)
    # the mean over positions (two positions, the second identical: KL 0)
    both = kl_teacher_student(torch.tensor([[t, s]]), torch.tensor([[s, s]])).item()
    assert both == pytest.approx(forward / 2, rel=1e-5)


def drifted_teacher_setup(on):
    """A model whose EMA (the teacher) lags the weights, a batch with known replay rows, and the student's
    logits; returns (teacher, model, batch, student, teacher_logits)."""
    model = tiny_model()
    ema = EMA(decay=0.99)
    ema.init_from(model)
    with torch.no_grad():
        dict(model.named_parameters())["lm_head.weight"].add_(torch.randn(50, 16, generator=torch.Generator().manual_seed(1)))
    torch.manual_seed(2)
    batch = {"input_ids": torch.randint(0, 50, (4, 6)), "is_replay": torch.tensor([False, True, False, True])}
    with torch.no_grad():
        student = model(input_ids=batch["input_ids"]).logits
        with ema.swapped(model):
            teacher_logits = model(input_ids=batch["input_ids"]).logits
    return MeanTeacher(ema, on=on), model, batch, student, teacher_logits


def kl_by_hand(teacher_logits, student_logits):
    p, q = teacher_logits.double().softmax(-1), student_logits.double().softmax(-1)
    return (p * (p.log() - q.log())).sum(-1)  # per position


def test_mean_teacher_pays_kl_from_the_ema_teacher_to_the_student():
    teacher, model, batch, student, teacher_logits = drifted_teacher_setup("all")
    got = teacher(model, batch, student).item()
    assert got == pytest.approx(kl_by_hand(teacher_logits, student).mean().item(), rel=1e-4)
    assert got != pytest.approx(kl_by_hand(student, teacher_logits).mean().item(), rel=1e-3)


@pytest.mark.parametrize("on", ["replay", "new"])
def test_mean_teacher_scores_only_the_selected_rows(on):
    teacher, model, batch, student, teacher_logits = drifted_teacher_setup(on)
    per_row = kl_by_hand(teacher_logits, student).mean(-1)  # 4 rows
    rows = batch["is_replay"] if on == "replay" else ~batch["is_replay"]
    expected = per_row[rows].mean().item()
    assert abs(expected - per_row.mean().item()) > 1e-3 * expected  # the choice of rows matters on this batch
    assert teacher(model, batch, student).item() == pytest.approx(expected, rel=1e-4)


class StepTrainer:
    global_step = 0


def test_ema_updates_only_every_n_optimizer_steps():
    """every_n_steps=3 over 8 steps, with micro-batches repeating a step (gradient accumulation): the
    average moves at steps 3 and 6 only, once each, towards the weights of that moment."""
    model = tiny_model()
    name = "lm_head.weight"
    p = dict(model.named_parameters())[name]
    ema = EMA(decay=0.5, every_n_steps=3)
    ema.init_from(model)
    expected = p.detach().clone()
    trainer = StepTrainer()
    module = type("Module", (), {"model": model})()
    for step in range(1, 9):
        with torch.no_grad():
            p.add_(float(step))
        trainer.global_step = step
        for _ in range(2):  # two micro-batches end at the same optimizer step
            ema.on_train_batch_end(trainer, module, None, None, 0)
        if step % 3 == 0:
            expected = 0.5 * expected + 0.5 * p.detach()
        assert torch.allclose(ema.shadow[name], expected, atol=1e-5), step

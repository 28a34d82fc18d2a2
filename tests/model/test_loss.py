"""model.chunked_loss: the causal-LM loss without the full float32 logits equals the plain path's loss and
gradients (every trainable parameter: LoRA weights, embedding / lm_head rows, new blocks) on a tiny Llama,
tied and untied, with and without a grown vocabulary and row masking; the evaluation's per-token losses too."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from cptlab.errors import CptlabError
from cptlab.evaluation.bpb import eval_sums, token_nll
from cptlab.model.adapter import apply_adapter
from cptlab.model.load import load_model
from cptlab.model.loss import causal_lm_loss, chunked_nll_sum, decoder_and_head
from cptlab.run.plan_values import freeze_plan
from cptlab.training.module import CPTModule
from cptlab.training.schedule import LRSchedule

BASE, GROWN, VOCAB_CHUNK = 96, 128, 7  # 7 positions per chunk: chunks that do not divide B*T


def tiny(tied: bool, grow: bool) -> torch.nn.Module:
    model = load_model(None, config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                         tie_word_embeddings=tied), dtype="float32", vocab_size=BASE)
    if grow:
        torch.manual_seed(0)
        model.resize_token_embeddings(GROWN, mean_resizing=False)
    return model


def adapter_cfg(name: str):
    return OmegaConf.create({"name": name, "r": 4, "alpha": 8.0, "dropout": 0.0, "rslora": False,
                             "train_new_tokens": name == "lora", "blocks": 1, "placement": "end",
                             "target_modules": ["q_proj", "v_proj", "gate_proj", "down_proj"]})


def schedule_cfg(name: str):
    return OmegaConf.create({"name": name, "stage1_steps": 3, "stage1_rows": "new", "rewarm": False, "phases": None})


def batch(vocab: int, ignore: bool = False, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab, (3, 13), generator=g)
    targets = tokens[:, 1:].clone()
    if ignore:
        targets[0, :5] = -100
        targets[2, -1] = -100
    return tokens[:, :-1], targets


def plain_loss(model, ids, targets):
    logits = model(input_ids=ids).logits
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())


def loss_and_grads(model, fn, ids, targets):
    model.zero_grad(set_to_none=True)
    loss = fn(model, ids, targets)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return loss.detach(), grads


def assert_same(a, b):
    (la, ga), (lb, gb) = a, b
    torch.testing.assert_close(la, lb, rtol=1e-6, atol=1e-6)
    assert ga.keys() == gb.keys() and ga
    for name in ga:
        torch.testing.assert_close(ga[name], gb[name], rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("adapter", ["none", "lora", "block_expansion"])
@pytest.mark.parametrize("grow", [False, True])
@pytest.mark.parametrize("tied", [False, True])
def test_chunked_loss_and_gradients_equal_the_plain_path(tied, grow, adapter):
    torch.manual_seed(0)
    model = apply_adapter(tiny(tied, grow), adapter_cfg(adapter), base_rows=BASE)
    plan = freeze_plan(model, schedule_cfg("full"), adapter_cfg(adapter))
    plan.apply(0)
    model.train()
    vocab = GROWN if grow else BASE
    for ignore in (False, True):
        ids, targets = batch(vocab, ignore)
        chunked = loss_and_grads(model, lambda m, i, t: causal_lm_loss(m, i, t, chunk=VOCAB_CHUNK), ids, targets)
        assert_same(loss_and_grads(model, plain_loss, ids, targets), chunked)
        # what trains gets its gradient through the chunks: the head's matrix (the tied input embedding too),
        # the LoRA weights, the new blocks
        _, head = decoder_and_head(model)
        head_names = {n for n, p in model.named_parameters() if p is head.weight}
        if adapter == "block_expansion":
            assert not head_names & chunked[1].keys() and all(".layers." in n for n in chunked[1])
        else:  # LoRA trains the head's new rows only: none without a grown vocabulary
            assert bool(head_names & chunked[1].keys()) == (adapter == "none" or grow)
        assert (adapter == "lora") == any("lora_" in n for n in chunked[1])


@pytest.mark.parametrize("tied", [False, True])
def test_row_masked_module_steps_match_the_plain_path(tied):
    """CPTModule with the two-stage schedule (stage 1: new rows only, masked after backward): the gradients
    the optimizer sees are the same with model.chunked_loss, and the old rows get none."""
    results = []
    for chunked in (False, True):
        torch.manual_seed(0)
        model = apply_adapter(tiny(tied, True), adapter_cfg("lora"), base_rows=BASE)
        plan = freeze_plan(model, schedule_cfg("two_stage"), adapter_cfg("lora"))
        module = CPTModule(model, lr=1e-2, weight_decay=0.1, betas=[0.9, 0.95], eps=1e-8,
                           schedule=LRSchedule(total_steps=6, warmup_steps=0), freeze=plan, chunked_loss=chunked)
        ids, targets = batch(GROWN)
        loss = module.training_step({"input_ids": ids, "targets": targets, "step": 0, "rows": 3, "replay_rows": 0}, 0)
        loss.backward()
        module.on_before_optimizer_step(None)
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((loss.detach(), grads))
    assert_same(*results)
    for name, grad in results[1][1].items():
        assert grad.shape[0] == GROWN and torch.count_nonzero(grad[:BASE]) == 0, name
        assert torch.count_nonzero(grad[BASE:]) > 0, name


class Stream:
    """A deterministic mixture-like stream for CPTDataModule: batch `step` is a pure function of `step`."""

    def __init__(self):
        from types import SimpleNamespace

        self.batch_size, self.domains = 3, [SimpleNamespace(name="x", role="new")]

    def batch(self, step, rank=0, world_size=1):
        ids, targets = batch(GROWN, seed=100 + step)
        return {"input_ids": ids, "targets": targets}

    def counts(self, step):
        return {"x": self.batch_size}


def fit_steps(chunked: bool, steps: int = 3) -> dict[str, torch.Tensor]:
    from cptlab.data.datamodule import CPTDataModule

    torch.manual_seed(0)
    model = apply_adapter(tiny(True, True), adapter_cfg("lora"), base_rows=BASE)
    plan = freeze_plan(model, schedule_cfg("two_stage"), adapter_cfg("lora"))
    module = CPTModule(model, lr=1e-2, weight_decay=0.1, betas=[0.9, 0.95], eps=1e-8,
                       schedule=LRSchedule(total_steps=steps, warmup_steps=1), freeze=plan, chunked_loss=chunked)
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=steps, gradient_clip_val=1.0, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, limit_val_batches=0, use_distributed_sampler=False)
    trainer.fit(module, datamodule=CPTDataModule(Stream()))
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_lightning_fit_with_chunked_loss_ends_at_the_same_weights():
    """Four optimizer steps across the stage switch (new rows, then LoRA + new rows) under Lightning."""
    plain, chunked = fit_steps(False, 4), fit_steps(True, 4)
    assert plain.keys() == chunked.keys()
    for name in plain:
        torch.testing.assert_close(plain[name], chunked[name], rtol=1e-4, atol=1e-5, msg=name)


class BiasedHead(torch.nn.Linear):
    """Not a plain bias-free nn.Linear: the chunked loss checkpoints it instead of fusing."""


@pytest.mark.parametrize("fused", [True, False])
def test_chunked_sum_never_builds_the_full_logits_and_fused_recomputes_nothing(fused, monkeypatch):
    """What is saved for backward is far smaller than the logits [N, V]: the fused path keeps the gradients it
    made in forward ([N, d] and [V, d]) and runs the head's matmul once per chunk; the checkpointed path keeps
    a chunk's hidden states and runs the head again in backward. The plain path (the control) keeps [N, V]."""
    torch.manual_seed(0)
    head = torch.nn.Linear(32, GROWN, bias=False) if fused else BiasedHead(32, GROWN, bias=True)
    hidden = torch.randn(16, 12, 32, requires_grad=True)
    targets = torch.randint(0, GROWN, (16, 12))
    full = targets.numel() * GROWN
    calls, sizes, linear = [], [], F.linear
    monkeypatch.setattr(F, "linear", lambda *a, **k: calls.append(1) or linear(*a, **k))

    def pack(t):
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        total = chunked_nll_sum(head, hidden, targets, chunk=VOCAB_CHUNK)
    forward_calls = len(calls)
    total.backward()
    chunks = -(-targets.numel() // VOCAB_CHUNK)
    assert forward_calls == chunks and len(calls) == (chunks if fused else 2 * chunks)
    assert sizes and max(sizes) <= full // 4 and sum(sizes) <= full // 2
    sizes.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        F.cross_entropy(head(hidden).flatten(0, 1), targets.flatten())
    assert max(sizes) >= full  # the control: the plain path keeps the full logits


@pytest.mark.parametrize("tied", [False, True])
def test_eval_per_token_losses_equal_the_plain_path(tied):
    torch.manual_seed(0)
    model = apply_adapter(tiny(tied, True), adapter_cfg("lora"), base_rows=BASE).eval()
    ids, targets = batch(GROWN)
    with torch.no_grad():
        plain, chunked = token_nll(model, ids, targets), token_nll(model, ids, targets, chunked=True)
    assert chunked.shape == targets.shape
    torch.testing.assert_close(chunked, plain, rtol=1e-6, atol=1e-6)
    blocks = torch.randint(0, GROWN, (5, 13), generator=torch.Generator().manual_seed(3))
    token_bytes = torch.randint(1, 4, (GROWN,))
    a = eval_sums(model, blocks, token_bytes, batch_size=2)
    b = eval_sums(model, blocks, token_bytes, batch_size=2, chunked=True)
    torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-6)


def test_mean_teacher_takes_the_plain_path():
    """The retention KL needs the student's logits: with a retention loss the module computes them (and the
    same loss as without model.chunked_loss)."""
    seen = []

    def retention(model, batch, logits):
        seen.append(logits.shape)
        return logits.float().mean() * 0

    losses = []
    for chunked in (False, True):
        torch.manual_seed(0)
        model = tiny(False, False)
        module = CPTModule(model, lr=1e-2, weight_decay=0.1, betas=[0.9, 0.95], eps=1e-8,
                           schedule=LRSchedule(total_steps=6, warmup_steps=0), chunked_loss=chunked)
        module.retention, module.retention_weight = retention, 1.0
        ids, targets = batch(BASE)
        losses.append(module.training_step({"input_ids": ids, "targets": targets, "step": 0, "rows": 3,
                                            "replay_rows": 0}, 0).detach())
    assert seen == [(3, 12, BASE)] * 2
    assert torch.equal(losses[0], losses[1])


def test_heads_that_do_more_than_a_linear_map_are_refused():
    model = tiny(False, False)
    model.config.final_logit_softcapping = 30.0
    with pytest.raises(CptlabError, match="final_logit_softcapping"):
        decoder_and_head(model)


@pytest.mark.parametrize("override", ["model.compile=true", "trainer.strategy=fsdp"])
def test_validate_refuses_what_the_chunked_loss_cannot_wrap(compose_cfg, tmp_path, override):
    from cptlab.run.validate import validate_values

    base = ["experiment=demo_zh", "debug=smoke", "model.chunked_loss=true"]
    validate_values(compose_cfg(base, output_dir=tmp_path))  # alone it is fine
    with pytest.raises(CptlabError, match="model.chunked_loss=true does not combine"):
        validate_values(compose_cfg([*base, override], output_dir=tmp_path))

"""Freezing schedules: phases from presets and YAML, group resolution on a tiny Llama (tied and untied,
with vocabulary growth), parameter counts, and errors that name the culprit."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf
from transformers import LlamaForCausalLM

from cptlab.errors import CptlabError
from cptlab.model.adapter import apply_adapter
from cptlab.model.freeze import FreezePlan, count_parameters
from cptlab.model.load import load_model
from cptlab.model.phases import Phase
from cptlab.run.plan_values import freeze_plan, phases_of

BASE, GROWN = 96, 128


def tiny(tied: bool = False, grow: int | None = GROWN, layers: int = 2) -> LlamaForCausalLM:
    """A random-init Llama as cptlab builds one (seed 0), its vocabulary grown from BASE to `grow` rows."""
    model = load_model(None, config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                         tie_word_embeddings=tied), dtype="float32", vocab_size=BASE)
    if grow:
        torch.manual_seed(0)
        model.resize_token_embeddings(grow, mean_resizing=False)
    return model


def schedule(**kw):
    base = {"name": "full", "stage1_steps": 10, "stage1_rows": "new", "rewarm": False, "phases": None}
    return OmegaConf.create({**base, **kw})


def lora(**kw):
    base = {"name": "lora", "r": 4, "alpha": 8.0, "dropout": 0.0, "rslora": False, "train_new_tokens": False,
            "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}
    return OmegaConf.create({**base, **kw})


def test_presets_are_phase_lists():
    assert phases_of(schedule()) == [Phase(None, ("adapter",))]
    assert phases_of(schedule(name="two_stage", stage1_steps=7)) == [
        Phase(7, ("new_rows",)), Phase(None, ("adapter",))]
    assert phases_of(schedule(name="two_stage", stage1_rows="all"))[0].train == ("embeddings", "lm_head")
    assert phases_of(schedule(name="new_tokens_only")) == [Phase(None, ("new_rows",))]
    custom = schedule(name="phases", phases=[{"until_step": 100, "train": ["new_rows"]},
                                             {"until_step": None, "train": ["adapter", "norms", "layers.10-11"]}])
    assert phases_of(custom) == [Phase(100, ("new_rows",)), Phase(None, ("adapter", "norms", "layers.10-11"))]


@pytest.mark.parametrize("cfg, fragment", [
    (dict(name="phases", phases=[{"until_step": None, "train": ["embedings"]}]), "'embedings'"),
    (dict(name="phases", phases=[{"until_step": None, "train": ["layers.x"]}]), "'layers.x'"),
    (dict(name="phases", phases=[{"until_step": None, "train": ["layers.3-1"]}]), "'layers.3-1'"),
    (dict(name="phases", phases=[{"until_step": 5, "train": ["all"]}]), "until_step: null"),
    (dict(name="phases", phases=[{"until_step": 5, "train": ["all"]}, {"until_step": 5, "train": ["all"]},
                                 {"until_step": None, "train": ["all"]}]), "phases[1].until_step=5"),
    (dict(name="phases", phases=[{"until_step": None, "train": []}]), "phases[0].train is empty"),
    (dict(name="phases"), "schedule.phases"),
    (dict(name="full", phases=[{"until_step": None, "train": ["all"]}]), "schedule=phases"),
])  # schedule.name / stage1_steps / stage1_rows: their rules beside cptlab.config (tests/reliability/test_validation)
def test_bad_schedules_name_the_culprit(cfg, fragment):
    with pytest.raises(CptlabError) as info:
        phases_of(schedule(**cfg))
    assert fragment in str(info.value)


@pytest.mark.parametrize("tied", [False, True])
def test_groups_resolve_to_parameters_and_rows(tied):
    model = tiny(tied)
    embed, head = "model.embed_tokens.weight", ("model.embed_tokens.weight" if tied else "lm_head.weight")
    plan = FreezePlan(model, [Phase(3, ("new_rows",)), Phase(6, ("embeddings",)), Phase(9, ("lm_head",)),
                              Phase(12, ("norms",)), Phase(15, ("layers.1",)), Phase(None, ("all",))], base_rows=BASE)
    assert plan.trainable(0) == {embed: BASE, head: BASE}
    assert plan.trainable(1) == {embed: 0}
    assert plan.trainable(2) == {head: 0}
    norms = plan.trainable(3)
    assert set(norms) == {n for n in plan.params if "norm" in n} and len(norms) == 2 * 2 + 1
    assert set(plan.trainable(4)) == {n for n in plan.params if n.startswith("model.layers.1.")}
    assert plan.trainable(5) == {n: 0 for n in plan.params}
    assert [plan.phase_at(s) for s in (0, 2, 3, 14, 15, 1000)] == [0, 0, 1, 4, 5, 5]
    assert plan.stage_starts == (3, 6, 9, 12, 15)
    # a whole matrix wins over its rows in a union
    assert plan.trained_until(1)[embed] == 0


def test_apply_sets_requires_grad_and_count_parameters_counts_rows():
    model = tiny(tied=False)
    plan = FreezePlan(model, [Phase(5, ("new_rows",)), Phase(None, ("all",))], base_rows=BASE)
    plan.apply(0)
    trainable_names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable_names == {"model.embed_tokens.weight", "lm_head.weight"}
    trainable, total = count_parameters(model)
    assert trainable == 2 * (GROWN - BASE) * 32
    assert total == sum(p.numel() for p in model.parameters())
    plan.apply(1)
    assert count_parameters(model) == (total, total)
    # multi-process mode: everything some phase trains keeps requires_grad
    plan.apply(0, keep_requires_grad=True)
    assert all(p.requires_grad for p in model.parameters())
    assert count_parameters(model)[0] == 2 * (GROWN - BASE) * 32


def test_a_phase_that_trains_nothing_says_why():
    with pytest.raises(CptlabError, match="phase 0 \\(new_rows\\) trains nothing.*no new token rows"):
        FreezePlan(tiny(grow=None), [Phase(None, ("new_rows",))])
    with pytest.raises(CptlabError, match="'layers.2'.*2 layers"):
        FreezePlan(tiny(), [Phase(None, ("layers.2",))])


def test_base_rows_recorded_by_apply_adapter_reach_the_plan():
    model = apply_adapter(tiny(), SimpleNamespace(name="none"), base_rows=BASE)
    plan = freeze_plan(model, schedule(name="new_tokens_only"), SimpleNamespace(train_new_tokens=False))
    assert plan.base_rows == BASE
    assert set(plan.trainable(0).values()) == {BASE}


@pytest.mark.parametrize("tied", [False, True])
def test_lora_with_train_new_tokens_trains_exactly_adapter_and_new_rows(tied):
    model = apply_adapter(tiny(tied), lora(train_new_tokens=True), base_rows=BASE)
    plan = freeze_plan(model, schedule(), lora(train_new_tokens=True))
    plan.apply(0)
    adapter = [n for n in plan.params if "lora_" in n]
    expected_adapter = sum(plan.params[n].numel() for n in adapter)
    # r=4, hidden 32, kv 16, mlp 64: per layer q,o (32+32)*4, k,v (32+16)*4, gate,up (32+64)*4, down (64+32)*4
    assert expected_adapter == 2 * 4 * (2 * 64 + 2 * 48 + 3 * 96)
    matrices = 1 if tied else 2
    trainable, total = count_parameters(model)
    assert trainable == expected_adapter + matrices * (GROWN - BASE) * 32
    assert {n for n, p in model.named_parameters() if p.requires_grad} == set(adapter) | {
        n for n in plan.params if n.endswith(("embed_tokens.weight", "lm_head.weight"))}
    # without train_new_tokens: the adapter only
    model = apply_adapter(tiny(tied), lora(), base_rows=BASE)
    plan = freeze_plan(model, schedule(), lora())
    plan.apply(0)
    assert count_parameters(model)[0] == expected_adapter


def test_adapter_that_never_trains_is_an_error():
    model = apply_adapter(tiny(), lora(), base_rows=BASE)
    with pytest.raises(CptlabError, match="adapter's weights train in no schedule phase"):
        freeze_plan(model, schedule(name="new_tokens_only"), lora())
    # layers.N includes the adapter weights in those blocks
    FreezePlan(model, [Phase(None, ("layers.0",))])

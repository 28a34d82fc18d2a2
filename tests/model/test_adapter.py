"""LoRA / DoRA through peft: target modules (default: every block projection), rslora, DoRA's magnitude,
errors naming a target that matches nothing, and the config checks."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from transformers import LlamaConfig, LlamaForCausalLM

from cptlab.errors import CptlabError
from cptlab.model.adapter import apply_adapter, is_peft, unwrap
from cptlab.model.adapter_targets import DEFAULT_TARGETS
from cptlab.model.freeze import adapter_params_of, base_rows_of


def tiny() -> LlamaForCausalLM:
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg)


def adapter(**kw):
    base = {"name": "lora", "r": 4, "alpha": 8.0, "dropout": 0.0, "rslora": False, "train_new_tokens": False,
            "target_modules": list(DEFAULT_TARGETS)}
    return OmegaConf.create({**base, **kw})


def test_none_returns_the_model_and_records_base_rows():
    model = tiny()
    out = apply_adapter(model, adapter(name="none"), base_rows=60)
    assert out is model and not is_peft(out)
    assert base_rows_of(out) == 60 and adapter_params_of(out) is None


def test_lora_targets_every_block_projection_and_starts_as_the_base():
    model = tiny()
    x = torch.randint(0, 64, (2, 8))
    with torch.no_grad():
        before = model(input_ids=x).logits
    out = apply_adapter(model, adapter(), base_rows=64)
    assert is_peft(out) and base_rows_of(out) == 64
    names = adapter_params_of(out)
    for layer in range(2):
        for target in DEFAULT_TARGETS:
            assert any(f"layers.{layer}." in n and f".{target}.lora_A." in n for n in names), (layer, target)
    assert {n for n, p in out.named_parameters() if p.requires_grad} == names
    with torch.no_grad():
        assert torch.equal(out(input_ids=x).logits, before)  # B = 0: the adapter starts as a no-op
    assert unwrap(out) is model


def test_dora_and_rslora():
    out = apply_adapter(tiny(), adapter(name="dora", rslora=True, target_modules=["q_proj", "v_proj"]), base_rows=64)
    names = adapter_params_of(out)
    assert any("lora_magnitude_vector" in n for n in names)
    assert not any("k_proj" in n for n in names)
    config = out.peft_config["default"]
    assert config.use_dora and config.use_rslora
    layer = unwrap(out).model.layers[0].self_attn.q_proj
    assert layer.scaling["default"] == pytest.approx(8.0 / 4 ** 0.5)


def test_target_matching_nothing_is_named():
    with pytest.raises(CptlabError, match="'qkv_proj' matches no module.*q_proj"):
        apply_adapter(tiny(), adapter(target_modules=["q_proj", "qkv_proj"]), base_rows=64)

# adapter.r / alpha / dropout / name / target_modules are refused by cptlab.run.validate (their rules live beside
# cptlab.config.AdapterConfig's fields): tests/reliability/test_validation.py.

"""load_model: a base directory, a random-init Llama, or random weights of a base's architecture (random_init)."""

import pytest

from cptlab.errors import CptlabError


def test_random_init_keeps_the_base_architecture_and_vocabulary(tmp_path):
    """model.random_init over a real base directory: its config with the size fields written over it."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from cptlab.model.load import load_model

    base = LlamaForCausalLM(LlamaConfig(vocab_size=300, hidden_size=96, intermediate_size=128, num_hidden_layers=3,
                                        num_attention_heads=6, num_key_value_heads=3, head_dim=16,
                                        tie_word_embeddings=True, rms_norm_eps=1e-5))
    base.save_pretrained(tmp_path / "base")
    sizes = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    model = load_model(str(tmp_path / "base"), config=sizes, dtype="float32", vocab_size=280, random_init=True)
    cfg = model.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.head_dim, cfg.vocab_size) == (32, 2, 8, 280)
    assert cfg.tie_word_embeddings and cfg.rms_norm_eps == 1e-5
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    again = load_model(str(tmp_path / "base"), config=sizes, dtype="float32", vocab_size=280, random_init=True)
    assert all((a == b).all() for a, b in zip(model.parameters(), again.parameters()))  # seeded
    with pytest.raises(CptlabError, match="model.config.no_such_field"):
        load_model(str(tmp_path / "base"), config={"no_such_field": 1}, dtype="float32", vocab_size=280,
                   random_init=True)


def test_a_dtype_name_must_name_a_torch_dtype():
    """model.dtype's message is the rule's (tests/reliability/test_validation.py); torch_dtype takes any torch
    dtype's name and refuses every other, including names of torch attributes that are not dtypes."""
    import torch

    from cptlab.model.load import torch_dtype

    assert torch_dtype("bfloat16") is torch.bfloat16 and torch_dtype("float32") is torch.float32
    for name in ("bogus", "nn", None):
        with pytest.raises(ValueError, match=f"{name!r} is not the name of a torch dtype"):
            torch_dtype(name)


def test_a_model_directory_at_fault_is_named_in_one_line(tmp_path):
    """A local base directory that is missing, has no config.json, one that is not a JSON object or one whose
    model_type transformers does not know is refused by check_model_source (run by the validation, and by
    load_model). A hub id is left to from_pretrained."""
    import json

    from cptlab.model.source import check_model_source

    check_model_source("owner/name")  # a hub id: not looked at here
    with pytest.raises(CptlabError, match=r"model directory not found: .*nowhere \(model.name_or_path\)"):
        check_model_source(str(tmp_path / "nowhere"))
    (tmp_path / "base").mkdir()
    with pytest.raises(CptlabError, match=r"base is not a Hugging Face model directory: no config.json"):
        check_model_source(str(tmp_path / "base"))
    config = tmp_path / "base" / "config.json"
    for text, why in [('{"model_type": "llama", "hidden_size": ', "Expecting value"), ("[1, 2]", "not a JSON object")]:
        config.write_text(text, encoding="utf-8")
        with pytest.raises(CptlabError, match=rf"base/config.json: cannot be read as a model config \({why}") as err:
            check_model_source(str(tmp_path / "base"))
        assert "\n" not in str(err.value)
    config.write_text(json.dumps({"model_type": "no_such_model_type"}), encoding="utf-8")
    with pytest.raises(CptlabError, match=r"base/config.json: cannot be read as a model config \(.*no_such_model_type"):
        check_model_source(str(tmp_path / "base"))
    config.write_text(json.dumps({"model_type": "llama"}), encoding="utf-8")
    check_model_source(str(tmp_path / "base"))

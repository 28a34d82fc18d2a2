"""Build the base causal LM: a Hugging Face directory or hub id, a random-init Llama from a config, or a
random-init model of a base's own architecture (`model.random_init`: smoke runs of real bases)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
)

from cptlab.errors import CptlabError
from cptlab.model.source import check_model_source, looks_local

# Fields a size override may set even where a config class does not pre-declare them.
SIZE_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
               "max_position_embeddings", "head_dim")


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype named `name` (model.dtype, checked by the run: "float32", "bfloat16", ...); a ValueError
    for a name that is not a torch dtype's."""
    dtype = getattr(torch, name, None) if isinstance(name, str) else None
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"{name!r} is not the name of a torch dtype (model.dtype)")
    return dtype


def random_llama_config(fields: dict[str, Any], *, vocab_size: int, bos_id: int | None, eos_id: int | None) -> LlamaConfig:
    try:
        return LlamaConfig(vocab_size=vocab_size, bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=None, **fields)
    except (TypeError, ValueError) as err:
        raise CptlabError(f"model.config: {str(err).splitlines()[0]}")


def architecture_config(name_or_path: str, fields: dict[str, Any] | None, *, vocab_size: int,
                        bos_id: int | None = None, eos_id: int | None = None) -> PretrainedConfig:
    """The config of the base `name_or_path` with `fields` (e.g. smaller sizes) written over it and the
    given vocabulary: the architecture of the base, the size of the caller's choosing. A head_dim the base
    states is recomputed from the new width and head count unless `fields` sets it."""
    check_model_source(name_or_path)
    config = AutoConfig.from_pretrained(Path(name_or_path).expanduser() if looks_local(name_or_path) else name_or_path)
    fields = dict(fields or {})
    for key, value in fields.items():
        if not hasattr(config, key) and key not in SIZE_FIELDS:
            raise CptlabError(f"model.config.{key}: not a field of {config.model_type} configs ({name_or_path})")
        setattr(config, key, value)
    if getattr(config, "head_dim", None) is not None and "head_dim" not in fields and (
            "hidden_size" in fields or "num_attention_heads" in fields):
        config.head_dim = config.hidden_size // config.num_attention_heads
    config.vocab_size = vocab_size
    if bos_id is not None:
        config.bos_token_id = bos_id
    if eos_id is not None:
        config.eos_token_id = eos_id
    return config


def load_model(name_or_path: str | None, *, config: dict[str, Any] | None, dtype: str, vocab_size: int,
               bos_id: int | None = None, eos_id: int | None = None, seed: int = 0,
               random_init: bool = False) -> PreTrainedModel:
    """The base model. With `name_or_path` the weights are loaded, or with `random_init` a model of its
    architecture is built from its config with `config`'s fields written over it (see architecture_config);
    without it a Llama is built from `config`. Random weights come from `seed`, the vocabulary is `vocab_size`."""
    dt = torch_dtype(dtype)
    if name_or_path and random_init:
        arch = architecture_config(name_or_path, config, vocab_size=vocab_size, bos_id=bos_id, eos_id=eos_id)
        arch._attn_implementation = "sdpa"
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            try:
                model = AutoModelForCausalLM.from_config(arch).to(dt)
            except (TypeError, ValueError) as err:
                raise CptlabError(f"model.config over {name_or_path}: {str(err).splitlines()[0]}")
    elif name_or_path:
        check_model_source(name_or_path)
        try:
            model = AutoModelForCausalLM.from_pretrained(Path(name_or_path).expanduser() if looks_local(name_or_path)
                                                         else name_or_path, dtype=dt, attn_implementation="sdpa")
        except OSError as err:
            raise CptlabError(f"cannot load model {name_or_path!r}: {str(err).splitlines()[0]}")
    elif config:
        cfg = random_llama_config(dict(config), vocab_size=vocab_size, bos_id=bos_id, eos_id=eos_id)
        cfg._attn_implementation = "sdpa"
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = LlamaForCausalLM(cfg).to(dt)
    else:
        raise CptlabError("set model.name_or_path (a model directory or hub id) or model.config (random init)")
    model.config.use_cache = False
    model.train()  # from_pretrained returns eval mode; Lightning keeps a module's mode, so dropout would stay off
    return model


def max_positions(model: PreTrainedModel) -> int | None:
    return getattr(model.config, "max_position_embeddings", None)

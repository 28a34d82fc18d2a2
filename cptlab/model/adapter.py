"""LoRA / DoRA adapters via peft, applied to the (possibly vocabulary-extended) base model.

The adapter's own weights are recorded on the returned model (`freeze.adapter_params_of`), so the
freezing schedule's group `adapter` means "what the adapter config trains"; `adapter.train_new_tokens`
adds the new token rows of the embedding and output matrices to it (a row mask on the base matrices,
see cptlab.model.freeze / cptlab.training.optim). `cptlab.run.export` turns those rows into peft's
`trainable_token_indices` for an adapter-only export.
"""

from __future__ import annotations

import torch

from cptlab.model.adapter_targets import check_targets
from cptlab.model.freeze import ADAPTER_PARAMS_ATTR, set_base_rows


def lora_config(adapter):
    from peft import LoraConfig

    targets = [str(t) for t in adapter.target_modules]
    return LoraConfig(r=int(adapter.r), lora_alpha=adapter.alpha, lora_dropout=float(adapter.dropout),
                      target_modules=targets, use_dora=adapter.name == "dora", use_rslora=bool(adapter.rslora),
                      bias="none", task_type="CAUSAL_LM")


def apply_adapter(model: torch.nn.Module, adapter, *, base_rows: int) -> torch.nn.Module:
    """`model` with the configured adapter (a peft model), or `model` itself with adapter=none.
    `base_rows`: embedding rows before vocabulary growth (rows >= base_rows are new tokens). `adapter` is a
    validated config (its values' rules live in the schema's AdapterConfig); what is checked here needs the
    model: the target modules and the blocks exist."""
    set_base_rows(model, base_rows)
    name = adapter.name if adapter is not None else "none"
    if name == "none":
        return model
    if name == "block_expansion":  # new zero-output blocks are the adapter (cptlab.model.expand)
        from cptlab.model.expand import expand_blocks, new_block_params

        expand_blocks(model, int(adapter.blocks), adapter.placement)
        setattr(model, ADAPTER_PARAMS_ATTR, new_block_params(model))
        return model
    check_targets(model, [str(t) for t in adapter.target_modules])
    from peft import get_peft_model

    peft_model = get_peft_model(model, lora_config(adapter))
    setattr(peft_model, ADAPTER_PARAMS_ATTR,
            frozenset(n for n, p in peft_model.named_parameters() if p.requires_grad))
    return peft_model


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The Hugging Face model inside a peft model (adapters still injected), or the model itself."""
    get = getattr(model, "get_base_model", None)
    return get() if callable(get) else model


def is_peft(model: torch.nn.Module) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover
        return False
    return isinstance(model, PeftModel)

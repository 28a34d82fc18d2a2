"""LoRA / DoRA adapters via peft, applied to the (possibly vocabulary-extended) base model.

The adapter's own weights are recorded on the returned model (`freeze.adapter_params_of`), so the
freezing schedule's group `adapter` means "what the adapter config trains"; `adapter.train_new_tokens`
adds the new token rows of the embedding and output matrices to it (a row mask on the base matrices,
see cptlab.model.freeze / cptlab.training.optim). `cptlab.run.export` turns those rows into peft's
`trainable_token_indices` for an adapter-only export.
"""

from __future__ import annotations

import torch

from cptlab.errors import CptlabError
from cptlab.model.freeze import ADAPTER_PARAMS_ATTR, set_base_rows

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _matches(module_name: str, target: str) -> bool:
    # peft's rule for a list of names: the full module name or its last dotted components.
    return module_name == target or module_name.endswith("." + target)


def check_targets(model: torch.nn.Module, targets: list[str]) -> None:
    names = [n for n, _ in model.named_modules()]
    for target in targets:
        if not any(_matches(n, target) for n in names):
            leaves = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                             if isinstance(m, torch.nn.Linear) and ".layers." in f".{n}"})
            raise CptlabError(f"adapter.target_modules: {target!r} matches no module of the model "
                              f"(linear layers of its blocks: {', '.join(leaves) or 'none'})")


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

"""A trained model made portable: adapters merged into a plain Hugging Face model, or copied into a fresh peft
model on the extended base (what `cptlab-export --adapter-only` writes). The run-directory side (which run,
which checkpoint, where it is written) is cptlab.run.export."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch

from cptlab.errors import CptlabError


def merged_model(model: torch.nn.Module) -> torch.nn.Module:
    """A plain Hugging Face model: LoRA/DoRA weights merged into the base layers (the model itself
    when it has no adapter)."""
    from cptlab.model.adapter import is_peft

    merged = model.merge_and_unload() if is_peft(model) else model
    for attr in ("_cptlab_base_rows", "_cptlab_adapter_params", "_cptlab_trainable", "_cptlab_new_blocks"):
        merged.__dict__.pop(attr, None)
    return merged


def adapter_copy(trained: torch.nn.Module, plan, base_rows: int, base: Callable[[], torch.nn.Module], *,
                 adapter_name: str):
    """A fresh peft model on the extended base (`base()`, built only once the adapter is known to fit) holding
    `trained`'s adapter weights, plus what the freezing plan `plan` (cptlab.model.freeze.FreezePlan) trained of
    the embedding/output matrices: the rows past `base_rows` as `trainable_token_indices`, whole matrices as
    `modules_to_save`. Base weights of the body the plan trained cannot be held by an adapter: refused."""
    from peft import get_peft_model

    from cptlab.model.freeze import adapter_params_of

    adapter_names = adapter_params_of(trained)
    if adapter_names is None:
        raise CptlabError("--adapter-only: the run has no adapter (adapter=none): export the merged model instead")
    if not hasattr(trained, "peft_config"):
        raise CptlabError(f"--adapter-only: adapter={adapter_name} adds whole decoder blocks, which a peft "
                          f"adapter cannot hold: export the merged model instead")
    embed, head = plan._matrix("in"), plan._matrix("out")
    matrices = {n: s for n, s in plan.union.items() if n not in adapter_names}
    extra = sorted(set(matrices) - {embed, head})
    if extra:
        raise CptlabError(f"--adapter-only: the schedule trained base weights an adapter cannot hold ({extra[0]}, "
                          f"{len(extra)} in all): export the merged model instead")
    params = dict(trained.named_parameters())
    tied = head == embed
    config = copy.deepcopy(trained.peft_config["default"])
    config.inference_mode = False
    whole = [n for n, s in matrices.items() if s == 0]
    rows_only = {n: s for n, s in matrices.items() if s > 0}
    modules = {embed: "embed_tokens", head: "lm_head"}
    if whole:
        config.modules_to_save = sorted({modules[n] for n in matrices})
    elif rows_only:
        indices = list(range(base_rows, params[embed].shape[0]))
        config.trainable_token_indices = indices if tied else {modules[n]: indices for n in rows_only}
    fresh = get_peft_model(base(), config)
    fresh_params = dict(fresh.named_parameters())
    missing = sorted(n for n in adapter_names if n not in fresh_params)
    if missing:
        raise CptlabError(f"--adapter-only: the rebuilt adapter lacks {missing[0]}: the run's adapter config changed")
    with torch.no_grad():
        for name in adapter_names:
            fresh_params[name].copy_(params[name])
        for name, module in fresh.named_modules():
            leaf = name.rsplit(".", 1)[-1]
            source = {"embed_tokens": embed, "lm_head": head}.get(leaf)
            if source is None or source not in matrices:
                continue
            weight = params[source]
            if hasattr(module, "token_adapter"):  # TrainableTokensWrapper
                adapter = module.token_adapter
                if adapter.tied_adapter is None:
                    idx = torch.tensor(adapter.token_indices["default"])
                    adapter.trainable_tokens_delta["default"].copy_(weight[idx])
            elif hasattr(module, "modules_to_save"):  # ModulesToSaveWrapper
                module.modules_to_save["default"].weight.copy_(weight)
    return fresh

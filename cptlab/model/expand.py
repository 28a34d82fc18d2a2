"""Block expansion (LLaMA Pro, Wu et al. 2024): new decoder blocks inserted among the base's, each a copy of
the block before it with its output projections zeroed, so the expanded model computes the base function.

A copied block's attention and MLP outputs enter the residual stream only through `o_proj` and `down_proj`;
zeroed, the block adds exactly 0 and the hidden state passes through unchanged (logits equal the base's
bit for bit). Training the new blocks alone (`adapter=block_expansion`: the freezing schedule's group
`adapter` is the new blocks) learns the new domain in fresh capacity while every original block stays as
it was. The result is a plain Hugging Face model with more layers (`config.num_hidden_layers`, the
attention modules' `layer_idx` and any per-layer `config.layer_types` follow the new order).

    cptlab-train adapter=block_expansion adapter.blocks=4                  # one copy after every N/4 blocks
    cptlab-train adapter=block_expansion 'adapter.placement=[3,7]'         # copies after blocks 3 and 7
"""

from __future__ import annotations

import copy

import torch

from cptlab.errors import CptlabError

PLACEMENTS = ("interleave", "end")
NEW_BLOCKS_ATTR = "_cptlab_new_blocks"
ZEROED = ("o_proj", "down_proj")


def _layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise CptlabError(f"adapter=block_expansion: {type(model).__name__} has no decoder-layer list (model.layers)")
    return layers


def check_expansion_config(adapter) -> None:
    """Model-independent checks of adapter.blocks / adapter.placement."""
    blocks = adapter.blocks
    if isinstance(blocks, bool) or not isinstance(blocks, int) or blocks < 1:
        raise CptlabError(f"adapter.blocks={blocks!r} must be an integer >= 1")
    placement = adapter.placement
    if isinstance(placement, str):
        if placement not in PLACEMENTS:
            raise CptlabError(f"adapter.placement={placement!r} must be one of {', '.join(PLACEMENTS)} or a list of "
                              f"block indices")
        return
    after = list(placement)
    if any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in after):
        raise CptlabError(f"adapter.placement={after}: block indices must be integers >= 0")
    if len(after) != blocks:
        raise CptlabError(f"adapter.placement={after} names {len(after)} blocks but adapter.blocks={blocks}")


def insert_after(n_layers: int, blocks: int, placement) -> list[int]:
    """The original blocks (0-based, sorted, repeats allowed) after which a copy goes: `interleave` splits the
    n_layers into `blocks` equal groups (as even as the numbers allow) and copies the last block of each
    (LLaMA Pro); `end` copies the last block `blocks` times; a list names them."""
    if isinstance(placement, str):
        if placement == "end":
            after = [n_layers - 1] * blocks
        elif placement == "interleave":
            if blocks > n_layers:
                raise CptlabError(f"adapter.blocks={blocks} exceeds the model's {n_layers} blocks with "
                                  f"adapter.placement=interleave (one copy per group of blocks)")
            after = [(i + 1) * n_layers // blocks - 1 for i in range(blocks)]
        else:
            raise CptlabError(f"adapter.placement={placement!r} must be one of {', '.join(PLACEMENTS)} or a list "
                              f"of block indices")
    else:
        after = sorted(int(i) for i in placement)
        bad = [i for i in after if not 0 <= i < n_layers]
        if bad:
            raise CptlabError(f"adapter.placement: block {bad[0]} does not exist (the model has {n_layers} blocks, "
                              f"0-{n_layers - 1})")
    return after


def expand_blocks(model: torch.nn.Module, blocks: int, placement="interleave") -> list[int]:
    """Insert `blocks` zero-output copies into `model` (a Hugging Face causal LM) in place. Returns the
    indices of the new blocks in the expanded model (also recorded on it as `new_blocks_of(model)`)."""
    layers = _layers(model)
    n = len(layers)
    after = insert_after(n, blocks, placement)
    config = model.config
    types = getattr(config, "layer_types", None)
    types = list(types) if isinstance(types, (list, tuple)) and len(types) == n else None
    new_layers, new_types, new_indices = [], [], []
    pending = sorted(after)
    for i, layer in enumerate(layers):
        new_layers.append(layer)
        if types is not None:
            new_types.append(types[i])
        while pending and pending[0] == i:
            pending.pop(0)
            new_indices.append(len(new_layers))
            new_layers.append(zero_output_copy(layer))
            if types is not None:
                new_types.append(types[i])
    model.model.layers = torch.nn.ModuleList(new_layers)
    for index, layer in enumerate(model.model.layers):
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = index
    config.num_hidden_layers = len(new_layers)
    if types is not None:
        config.layer_types = new_types
    setattr(model, NEW_BLOCKS_ATTR, tuple(new_indices))
    return new_indices


def zero_output_copy(layer: torch.nn.Module) -> torch.nn.Module:
    """A deep copy of a decoder block whose output projections (o_proj, down_proj) are zero."""
    block = copy.deepcopy(layer)
    zeroed = 0
    with torch.no_grad():
        for name, module in block.named_modules():
            if name.rsplit(".", 1)[-1] in ZEROED and isinstance(module, torch.nn.Linear):
                module.weight.zero_()
                if module.bias is not None:
                    module.bias.zero_()
                zeroed += 1
    if zeroed != len(ZEROED):
        raise CptlabError(f"adapter=block_expansion: a {type(layer).__name__} has no {' and '.join(ZEROED)} "
                          f"linear layers to zero (found {zeroed}): the model's blocks are not Llama-like")
    return block


def new_blocks_of(model: torch.nn.Module) -> tuple[int, ...]:
    """Indices of the blocks block expansion added (empty for any other model)."""
    return tuple(getattr(model, NEW_BLOCKS_ATTR, ()))


def new_block_params(model: torch.nn.Module) -> frozenset[str]:
    """Names (as model.named_parameters() yields them) of the new blocks' parameters."""
    layers = _layers(model)
    ids = {id(p) for i in new_blocks_of(model) for p in layers[i].parameters()}
    return frozenset(n for n, p in model.named_parameters() if id(p) in ids)


def original_index(model: torch.nn.Module) -> dict[int, int]:
    """Expanded-model block index -> the base block it is (new blocks left out)."""
    new = set(new_blocks_of(model))
    kept = [i for i in range(len(_layers(model))) if i not in new]
    return {i: j for j, i in enumerate(kept)}

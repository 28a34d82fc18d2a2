"""Causal-LM cross-entropy without the full logits (`model.chunked_loss`): the decoder's hidden states go
through the output head a chunk of positions at a time, so the float32 logits [B*T, V] never exist whole.

At a 56k vocabulary and a 135M model the logits, their log-softmax and their gradient are the largest
tensors of a step (each B*T x V x 4 bytes). Here each chunk's logits are made, reduced to a loss sum and
dropped; `torch.utils.checkpoint` keeps only the chunk's hidden states for backward, which recomputes the
chunk's logits when it needs them. The loss and every gradient equal the plain path's
(`F.cross_entropy(model(ids).logits.float(), targets)`) to float32 rounding: same head module, same dtype
casts, only the order of the final sum differs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from cptlab.errors import CptlabError
from cptlab.model.adapter import unwrap

# Positions per chunk: about this many float32 logits (64 MiB) whatever the vocabulary.
CHUNK_ELEMENTS = 1 << 24
IGNORE_INDEX = -100  # F.cross_entropy's default, as the plain path uses it
# Config fields of heads that do more than a linear map (Gemma's soft-capping, Cohere's / Granite's scaling):
# the chunked path calls the head module alone, so it refuses them rather than compute another loss.
HEAD_EXTRAS = ("final_logit_softcapping", "logit_scale", "logits_scaling")


def decoder_and_head(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(decoder, output head) of a causal LM, a peft-wrapped one (adapters stay injected in both) or a
    block-expanded one: the decoder returns the final-normed hidden states that the head maps to logits."""
    hf = unwrap(model)
    head = hf.get_output_embeddings() if hasattr(hf, "get_output_embeddings") else None
    decoder = hf.get_decoder() if hasattr(hf, "get_decoder") else None
    if head is None or decoder is None or decoder is hf:
        raise CptlabError(f"model.chunked_loss=true: {type(hf).__name__} has no separate decoder and output head; "
                          f"set model.chunked_loss=false")
    config = getattr(hf, "config", None)
    extras = [f for f in HEAD_EXTRAS if getattr(config, f, None) not in (None, 1, 1.0)]
    if extras:
        raise CptlabError(f"model.chunked_loss=true: {type(hf).__name__}'s head also applies {extras[0]}; "
                          f"set model.chunked_loss=false")
    return decoder, head


def hidden_states(model: torch.nn.Module, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.nn.Module]:
    """The decoder's last hidden states [B, T, d] for `input_ids`, and the head that turns them into logits."""
    decoder, head = decoder_and_head(model)
    return decoder(input_ids=input_ids, use_cache=False).last_hidden_state, head


def chunk_rows(vocab: int) -> int:
    return max(1, CHUNK_ELEMENTS // max(vocab, 1))


def _chunk_sum(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(head(hidden).float(), targets, reduction="sum")


def chunked_nll_sum(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor,
                    chunk: int | None = None) -> torch.Tensor:
    """Summed cross-entropy (float32) of `targets` [...] under logits `head(hidden)` [..., V], chunk by chunk;
    positions whose target is -100 count for nothing. With gradients enabled each chunk is checkpointed."""
    flat, tgt = hidden.flatten(0, -2), targets.flatten()
    chunk = chunk or chunk_rows(_vocab(head))
    grad = torch.is_grad_enabled()
    total = None
    for h, t in zip(flat.split(chunk), tgt.split(chunk)):
        part = checkpoint(_chunk_sum, head, h, t, use_reentrant=False) if grad else _chunk_sum(head, h, t)
        total = part if total is None else total + part
    return total if total is not None else flat.new_zeros((), dtype=torch.float32)


def chunked_token_nll(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor,
                      chunk: int | None = None) -> torch.Tensor:
    """Per-position cross-entropy (float32, shaped like `targets`) without the full logits; for evaluation
    (no gradient)."""
    flat, tgt = hidden.flatten(0, -2), targets.flatten()
    chunk = chunk or chunk_rows(_vocab(head))
    parts = [F.cross_entropy(head(h).float(), t, reduction="none") for h, t in zip(flat.split(chunk), tgt.split(chunk))]
    return torch.cat(parts).view_as(targets)


def causal_lm_loss(model: torch.nn.Module, input_ids: torch.Tensor, targets: torch.Tensor,
                   chunk: int | None = None) -> torch.Tensor:
    """Mean cross-entropy over the non-ignored targets, as `F.cross_entropy(logits.float(), targets)` gives it."""
    hidden, head = hidden_states(model, input_ids)
    total = chunked_nll_sum(head, hidden, targets, chunk)
    return total / (targets != IGNORE_INDEX).sum()


def _vocab(head: torch.nn.Module) -> int:
    weight = getattr(head, "weight", None)
    if weight is not None and weight.dim() == 2:
        return weight.shape[0]
    return getattr(head, "out_features", 1)

"""Causal-LM cross-entropy without the full logits (`model.chunked_loss`): the decoder's hidden states go
through the output head a chunk of positions at a time, so the float32 logits [B*T, V] never exist whole.

At a 56k vocabulary and a 135M model the logits, their log-softmax and their gradient are the largest
tensors of a step (each B*T x V x 4 bytes). Here each chunk's logits are made, reduced to a loss sum and
dropped. A plain linear head (every Llama-style model) takes the fused path: the chunk's gradients with
respect to the hidden states and the head's matrix (softmax minus one-hot, two matmuls) are computed right
there in the forward pass and handed to autograd in backward, so nothing is recomputed. Any other head module
is run under `torch.utils.checkpoint`, which keeps only the chunk's hidden states and recomputes the chunk's
logits in backward. The loss and every gradient equal the plain path's
(`F.cross_entropy(model(ids).logits.float(), targets)`) to float32 rounding: the same matmuls and dtype
casts, only the order of the sums differs.
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


def hidden_states(model: torch.nn.Module, input_ids: torch.Tensor,
                  position_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.nn.Module]:
    """The decoder's last hidden states [B, T, d] for `input_ids`, and the head that turns them into logits;
    `position_ids`: data.doc_masking's (cptlab.model.doc_mask), None for plain positions."""
    decoder, head = decoder_and_head(model)
    return decoder(input_ids=input_ids, position_ids=position_ids, use_cache=False).last_hidden_state, head


def chunk_rows(vocab: int) -> int:
    return max(1, CHUNK_ELEMENTS // max(vocab, 1))


def _chunk_sum(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(head(hidden).float(), targets, reduction="sum")


class _FusedLinearCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of `targets` [N] under `hidden` [N, d] @ `weight` [V, d].T, a chunk of rows at a
    time; the gradients are made in forward (only the inputs that need one) and scaled in backward."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk):
        need_hidden, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_weight else None
        total = hidden.new_zeros((), dtype=torch.float32)
        for start in range(0, hidden.shape[0], chunk):
            h, t = hidden[start:start + chunk], targets[start:start + chunk]
            logits = F.linear(h, weight).float()  # as head(h).float(): autocast applies to F.linear alike
            valid = t != IGNORE_INDEX
            picked = t.clamp_min(0)
            lse = torch.logsumexp(logits, dim=-1)
            total = total + ((lse - logits.gather(1, picked[:, None]).squeeze(1)) * valid).sum()
            if grad_hidden is None and grad_weight is None:
                continue
            grad = logits.sub_(lse[:, None]).exp_()  # the softmax, in the logits' memory
            grad[torch.arange(len(t), device=grad.device), picked] -= 1.0
            grad.mul_(valid[:, None])
            if grad_hidden is not None:
                grad_hidden[start:start + chunk] = torch.mm(grad.to(weight.dtype), weight)
            if grad_weight is not None:
                grad_weight += torch.mm(grad.t().to(h.dtype), h).float()
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_total):
        grad_hidden, grad_weight = ctx.saved_tensors
        return (grad_hidden * grad_total.to(grad_hidden.dtype) if grad_hidden is not None else None,
                (grad_weight * grad_total).to(ctx.weight_dtype) if grad_weight is not None else None, None, None)


def _fusable(head: torch.nn.Module) -> bool:
    """A bias-free nn.Linear with no hooks: its function is F.linear(h, weight) and nothing else."""
    return (type(head) is torch.nn.Linear and head.bias is None and not head._forward_hooks
            and not head._forward_pre_hooks)


def chunked_nll_sum(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor,
                    chunk: int | None = None) -> torch.Tensor:
    """Summed cross-entropy (float32) of `targets` [...] under logits `head(hidden)` [..., V], chunk by chunk;
    positions whose target is -100 count for nothing. With gradients enabled a plain linear head takes the
    fused path, any other head checkpoints each chunk."""
    flat, tgt = hidden.flatten(0, -2), targets.flatten()
    chunk = chunk or chunk_rows(_vocab(head))
    grad = torch.is_grad_enabled()
    if grad and _fusable(head) and (flat.requires_grad or head.weight.requires_grad):
        return _FusedLinearCrossEntropy.apply(flat, head.weight, tgt, chunk)
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
                   chunk: int | None = None, position_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy over the non-ignored targets, as `F.cross_entropy(logits.float(), targets)` gives it."""
    hidden, head = hidden_states(model, input_ids, position_ids)
    total = chunked_nll_sum(head, hidden, targets, chunk)
    return total / (targets != IGNORE_INDEX).sum()


def _vocab(head: torch.nn.Module) -> int:
    weight = getattr(head, "weight", None)
    if weight is not None and weight.dim() == 2:
        return weight.shape[0]
    return getattr(head, "out_features", 1)

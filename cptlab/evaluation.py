"""Held-out evaluation: loss (nats/token), perplexity and bits per UTF-8 byte.

Per-token perplexity is not comparable across vocabularies; bits per byte is: the summed negative
log-likelihood (in bits) of the held-out tokens divided by the UTF-8 bytes those tokens stand for.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from cptlab.model.loss import chunked_token_nll, hidden_states


def token_nll(model, input_ids: torch.Tensor, targets: torch.Tensor, *, chunked: bool = False,
              vocab_limit: int | None = None) -> torch.Tensor:
    """Per-position negative log-likelihood (float32) of `targets` under the causal LM; `chunked`: without
    the full logits (model.chunked_loss, cptlab.model.loss), same values. `vocab_limit`: the softmax over the
    first that many tokens only: after a vocabulary extension, exactly the unextended base's distribution
    (its rows are untouched), on text whose ids all lie below the limit."""
    if chunked and vocab_limit is None:
        hidden, head = hidden_states(model, input_ids)
        return chunked_token_nll(head, hidden, targets)
    logits = model(input_ids=input_ids).logits[..., :vocab_limit]
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none").view_as(targets)


@torch.no_grad()
def eval_sums(model, blocks: torch.Tensor, token_bytes: torch.Tensor, *, batch_size: int,
              device: torch.device | str = "cpu", n_batches: int | None = None,
              filler: torch.Tensor | None = None, chunked: bool = False, vocab_limit: int | None = None
              ) -> torch.Tensor:
    """[nll_sum, n_tokens, n_bytes] (float64) over `blocks` ([n, seq_len + 1] token ids).
    `n_batches`: run this many forward passes even if `blocks` needs fewer, on `filler` (a block; counts
    for nothing): under FSDP every forward is collective, so all ranks must make the same number.
    `chunked`: per-token losses without the full logits (model.chunked_loss); `vocab_limit`: see token_nll."""
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    token_bytes = token_bytes.to(device)
    starts = list(range(0, len(blocks), batch_size))
    was_training = model.training
    model.eval()
    try:
        for i in starts:
            chunk = blocks[i:i + batch_size].to(device, non_blocking=True)
            inputs, targets = chunk[:, :-1], chunk[:, 1:]
            nll = token_nll(model, inputs, targets, chunked=chunked, vocab_limit=vocab_limit)
            sums[0] += nll.double().sum()
            sums[1] += targets.numel()
            sums[2] += token_bytes[targets].double().sum()
        for _ in range(len(starts), n_batches or 0):
            model(input_ids=(blocks if filler is None else filler)[:1, :-1].to(device))
    finally:
        model.train(was_training)
    return sums


def metrics_from_sums(sums) -> dict[str, float]:
    nll, n_tokens, n_bytes = (float(x) for x in sums)
    loss = nll / max(n_tokens, 1.0)
    return {
        "loss": loss,
        "ppl": math.exp(min(loss, 80.0)),
        "bpb": nll / math.log(2) / max(n_bytes, 1.0),
    }


def unigram_bpb(train_counts, blocks: torch.Tensor, token_bytes: torch.Tensor) -> float:
    """Bits per byte of a unigram model (the train split's token counts, `DomainTokens.unigram_counts()`,
    add-one smoothed) on the targets of `blocks`: the floor a real language model must beat by a wide margin."""
    import numpy as np

    vocab = len(token_bytes)
    train_counts = np.asarray(train_counts)[:vocab]
    counts = np.ones(vocab, dtype=np.float64)
    counts[: len(train_counts)] += train_counts
    logp = np.log2(counts / counts.sum())
    targets = blocks[:, 1:].numpy().ravel()
    return float(-logp[targets].sum() / max(token_bytes[targets].sum().item(), 1))

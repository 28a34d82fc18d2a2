"""Held-out evaluation: loss (nats/token), perplexity and bits per UTF-8 byte.

Per-token perplexity is not comparable across vocabularies; bits per byte is: the summed negative
log-likelihood (in bits) of the held-out tokens divided by the UTF-8 bytes those tokens stand for.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from cptlab.model.doc_mask import document_position_ids
from cptlab.model.loss import chunked_token_nll, hidden_states


def token_nll(model, input_ids: torch.Tensor, targets: torch.Tensor, *, chunked: bool = False,
              vocab_limit: int | None = None, position_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Per-position negative log-likelihood (float32) of `targets` under the causal LM; `chunked`: without
    the full logits (model.chunked_loss, cptlab.model.loss), same values. `vocab_limit`: the softmax over the
    first that many tokens only: after a vocabulary extension, exactly the unextended base's distribution
    (its rows are untouched), on text whose ids all lie below the limit. `position_ids`: data.doc_masking's
    (cptlab.model.doc_mask); no cache, so the model masks each document off from the others."""
    if chunked and vocab_limit is None:
        hidden, head = hidden_states(model, input_ids, position_ids)
        return chunked_token_nll(head, hidden, targets)
    masked = {} if position_ids is None else {"position_ids": position_ids, "use_cache": False}
    logits = model(input_ids=input_ids, **masked).logits[..., :vocab_limit]
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none").view_as(targets)


@torch.no_grad()
def eval_sums(model, blocks: torch.Tensor, token_bytes: torch.Tensor, *, batch_size: int,
              device: torch.device | str = "cpu", n_batches: int | None = None,
              filler: torch.Tensor | None = None, chunked: bool = False, vocab_limit: int | None = None,
              per_block: bool = False, doc_eos: int | None = None
              ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """[nll_sum, n_tokens, n_bytes] (float64) over `blocks` ([n, seq_len + 1] token ids).
    `per_block`: also return the same three sums per block ([n, 3], from the same forward passes; they add up
    to the totals): what cptlab-compare's bootstrap over evaluation blocks resamples.
    `n_batches`: run this many forward passes even if `blocks` needs fewer, on `filler` (a block; counts
    for nothing): under FSDP every forward is collective, so all ranks must make the same number.
    `chunked`: per-token losses without the full logits (model.chunked_loss); `vocab_limit`: see token_nll.
    `doc_eos`: data.doc_masking's EOS id: each document of a block is scored as if alone (cptlab.model.doc_mask)."""
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    rows = []  # per_block: [nll, n_tokens, n_bytes] of each block
    token_bytes = token_bytes.to(device)
    starts = list(range(0, len(blocks), batch_size))
    was_training = model.training
    model.eval()
    try:
        for i in starts:
            chunk = blocks[i:i + batch_size].to(device, non_blocking=True)
            inputs, targets = chunk[:, :-1], chunk[:, 1:]
            position_ids = None if doc_eos is None else document_position_ids(inputs, doc_eos)
            nll = token_nll(model, inputs, targets, chunked=chunked, vocab_limit=vocab_limit, position_ids=position_ids)
            sums[0] += nll.double().sum()
            sums[1] += targets.numel()
            sums[2] += token_bytes[targets].double().sum()
            if per_block:
                rows.append(torch.stack([nll.double().sum(1), torch.full_like(nll[:, 0], targets.shape[1],
                                         dtype=torch.float64), token_bytes[targets].double().sum(1)], 1))
        for _ in range(len(starts), n_batches or 0):
            model(input_ids=(blocks if filler is None else filler)[:1, :-1].to(device))
    finally:
        model.train(was_training)
    if per_block:
        return sums, torch.cat(rows) if rows else torch.zeros(0, 3, dtype=torch.float64, device=device)
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

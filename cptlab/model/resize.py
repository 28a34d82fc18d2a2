"""Grow a model's embedding and output matrices for an extended tokenizer: trained rows kept bit for bit, new
rows initialised randomly, as the mean row (Hewitt 2021) or as the mean of their base subwords (FVT)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import PreTrainedModel

from cptlab.errors import CptlabError


def _tokenizer(tokenizer):
    if isinstance(tokenizer, (str, Path)):
        from cptlab.tokenizer.hf import load_tokenizer

        return load_tokenizer(Path(tokenizer))
    return tokenizer


def base_subwords(base_tokenizer, new_tokenizer, ids: range, limit: int) -> dict[int, list[int]]:
    """For each new id, the base ids (below `limit`) its token segments into; empty where there are none.

    The token's string is segmented by the base tokenizer's model directly: new and base tokens are
    spelled alike (SentencePiece pieces with "▁" for a space; byte-level tokens in the byte alphabet, a
    piece of a character included), so this is the base's encoding of the token's text without the
    steps that would distort a lone token (a dummy-prefix "▁", pre-tokenizer splits). Base <unk> ids
    carry no meaning and are left out.
    """
    model = base_tokenizer.backend_tokenizer.model
    unk = base_tokenizer.unk_token_id
    special = set(new_tokenizer.added_tokens_decoder)
    tokens = new_tokenizer.convert_ids_to_tokens(list(ids))
    out = {}
    for new_id, token in zip(ids, tokens):
        if token is None or new_id in special:
            out[new_id] = []
            continue
        out[new_id] = [t.id for t in model.tokenize(token) if t.id != unk and 0 <= t.id < limit]
    return out


def grow_embeddings(
    model: PreTrainedModel,
    new_size: int,
    *,
    init: str,
    base_tokenizer=None,
    new_tokenizer=None,
    pad_to_multiple_of: int | None = 64,
    seed: int = 0,
) -> dict:
    """Resize the input embedding and the output matrix (tied or not) to `new_size` rows, rounded up to
    `pad_to_multiple_of`; rows below the old size are unchanged bit for bit.

    New token rows `[old, new_size)` by `init`: "random" normal(0, config.initializer_range) drawn from a
    generator seeded with `seed`; "mean" the mean of the old rows, input and (untied) output matrix each
    their own; "subword_mean" the mean of the rows of the base ids the token's text segments into (see
    `base_subwords`; tokenizers are objects or directories), "mean" where there are none. Padding rows
    `[new_size, padded)` never come out of the tokenizer; they get the mean row too, input and output:
    their input rows are never read, and a mean output row starts them at an average logit (bounded
    divergence from the base, Hewitt 2021) that training then only pushes down, as they are never targets.
    `init` is one of the schema's INITS (the config's rule refuses any other before a model is built).
    """
    inputs = model.get_input_embeddings()
    old_rows = inputs.weight.shape[0]
    if new_size < old_rows:
        raise CptlabError(
            f"the tokenizer has {new_size} tokens but the model's embedding already has {old_rows} rows: "
            "an extended tokenizer must keep every base id (tokenizer.path / model.name_or_path do not match)"
        )
    if init == "subword_mean" and (base_tokenizer is None or new_tokenizer is None):
        raise CptlabError("tokenizer.init=subword_mean needs the base and the extended tokenizer")
    padded = new_size if not pad_to_multiple_of else -(-new_size // pad_to_multiple_of) * pad_to_multiple_of

    outputs = model.get_output_embeddings()
    old_input = inputs.weight.detach().float()
    old_output = outputs.weight.detach().float() if outputs is not None else None
    tied = outputs is not None and outputs.weight is inputs.weight
    if padded != old_rows:
        # transformers copies the old rows bit for bit; its own init of the new rows (drawn from the global
        # generator) is overwritten below, and the fork keeps the caller's random stream untouched.
        with torch.random.fork_rng(devices=[]):
            model.resize_token_embeddings(padded, mean_resizing=False)
    inputs, outputs = model.get_input_embeddings(), model.get_output_embeddings()
    matrices = [(inputs.weight, old_input)]
    if outputs is not None and not tied:
        matrices.append((outputs.weight, old_output))

    subwords = {}
    if init == "subword_mean":
        subwords = base_subwords(_tokenizer(base_tokenizer), _tokenizer(new_tokenizer), range(old_rows, new_size),
                                 old_rows)
    generator = torch.Generator().manual_seed(seed)
    std = getattr(model.config, "initializer_range", 0.02)
    with torch.no_grad():
        for weight, old in matrices:
            mean = old.mean(dim=0)
            rows = mean.expand(padded - old_rows, -1).clone()
            count = new_size - old_rows
            if init == "random":
                rows[:count] = torch.randn(count, old.shape[1], generator=generator) * std
            elif init == "subword_mean":
                for offset, new_id in enumerate(range(old_rows, new_size)):
                    if subwords[new_id]:
                        rows[offset] = old[subwords[new_id]].mean(dim=0)
            weight[old_rows:] = rows.to(device=weight.device, dtype=weight.dtype)
    model.config.vocab_size = padded
    return {
        "old_rows": old_rows,
        "new_rows": new_size - old_rows,
        "padded_rows": padded - new_size,
        "init": init,
        "fallback_rows": sum(1 for ids in subwords.values() if not ids) if init == "subword_mean" else 0,
    }

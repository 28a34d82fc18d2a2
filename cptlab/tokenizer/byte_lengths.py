"""How many UTF-8 bytes of text each token id stands for: the denominator of bits-per-byte, which stays
comparable across tokenizers where per-token loss does not."""

from __future__ import annotations

import json
import re

import numpy as np
from tokenizers import pre_tokenizers

BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")


def _has_byte_level(component) -> bool:
    """Whether a serialized pre-tokenizer/decoder (possibly a Sequence) contains a ByteLevel step."""
    if isinstance(component, dict):
        return component.get("type") == "ByteLevel" or any(_has_byte_level(v) for v in component.values())
    if isinstance(component, list):
        return any(_has_byte_level(v) for v in component)
    return False


def token_byte_lengths(tokenizer) -> np.ndarray:
    """int64 array of length `len(tokenizer)`: the text bytes each token id decodes to.

    SentencePiece-style pieces count "▁" as the space it stands for and `<0xNN>` byte pieces as one byte;
    GPT-2 style byte-level tokens count one byte per character of the bytes-to-unicode alphabet. EOS
    counts 1 (it stands for the boundary between documents, like the newline between lines of a text
    file); other special tokens count 0. For tokenizers without a dummy prefix (ours) the lengths of a
    text's ids sum to its UTF-8 length exactly; a dummy-prefix tokenizer overcounts one byte per text.
    """
    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    byte_level = _has_byte_level(backend.get("pre_tokenizer")) or _has_byte_level(backend.get("decoder"))
    alphabet = set(pre_tokenizers.ByteLevel.alphabet())
    added = tokenizer.added_tokens_decoder
    special = set(tokenizer.all_special_ids) | {i for i, token in added.items() if token.special}

    lengths = np.zeros(len(tokenizer), dtype=np.int64)
    for index, token in enumerate(tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))):
        if token is None or index in special:
            continue
        if byte_level and index not in added and set(token) <= alphabet:
            # Byte-level vocabularies spell each byte as one printable character.
            lengths[index] = len(token)
        elif BYTE_PIECE.fullmatch(token):
            lengths[index] = 1
        else:
            # Added (non-special) tokens are matched in raw text, so they count as written.
            lengths[index] = len(token.replace("▁", " ").encode("utf-8"))
    if tokenizer.eos_token_id is not None:
        lengths[tokenizer.eos_token_id] = 1
    return lengths

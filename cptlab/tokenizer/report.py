"""How well a tokenizer fits a text: tokens per character, the share of tokens that are character fragments
(byte fallback), and batch-encoding throughput."""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

import numpy as np

from cptlab.tokenizer.bpe_extend import token_bytes
from cptlab.tokenizer.byte_lengths import BYTE_PIECE, _has_byte_level
from cptlab.tokenizer.hf import load_tokenizer


def _encode(tokenizer, texts: list[str]) -> list[list[int]]:
    """Ids of each text without special tokens, from a HF tokenizer or a SentencePieceProcessor."""
    if hasattr(tokenizer, "backend_tokenizer"):
        return tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    return tokenizer.encode(texts)


def tokens_per_char(tokenizer, texts: list[str]) -> float:
    """Tokens (no special tokens) per character of `texts`, all texts pooled; NaN for no characters.

    `tokenizer` is a HF tokenizer or a SentencePieceProcessor.
    """
    chars = sum(len(text) for text in texts)
    if chars == 0:
        return float("nan")
    return sum(len(ids) for ids in _encode(tokenizer, texts)) / chars


def fragment_ids(tokenizer) -> np.ndarray:
    """Boolean array over ids: which tokens stand for a fragment of a character rather than whole characters.

    SentencePiece-style vocabularies: the `<0xNN>` byte-fallback pieces. Byte-level BPE vocabularies
    (where every token is bytes): tokens whose bytes are not complete UTF-8 on their own, i.e. that cut
    through a multi-byte character, like the two or three byte tokens an English BPE spells a Chinese
    character with. Added and special tokens never count.
    """
    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    byte_level = _has_byte_level(backend.get("pre_tokenizer")) or _has_byte_level(backend.get("decoder"))
    added = tokenizer.added_tokens_decoder
    flags = np.zeros(len(tokenizer), dtype=bool)
    for index, token in enumerate(tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))):
        if token is None or index in added:
            continue
        if BYTE_PIECE.fullmatch(token):
            flags[index] = True
        elif byte_level and (data := token_bytes(token)) is not None:
            try:
                data.decode("utf-8")
            except UnicodeDecodeError:
                flags[index] = True
    return flags


def tokenizer_report(tokenizer_dir: Path, texts: list[str]) -> dict:
    """`tokens_per_char`, `byte_fallback_share` (fragment tokens / tokens, see `fragment_ids`),
    `encode_tokens_per_sec` (one batch encode of `texts`, timed), `n_tokens` and `n_chars`."""
    tokenizer = load_tokenizer(Path(tokenizer_dir))
    start = time.perf_counter()
    ids = _encode(tokenizer, texts)
    seconds = time.perf_counter() - start
    n_tokens = sum(len(x) for x in ids)
    n_chars = sum(len(text) for text in texts)
    flags = fragment_ids(tokenizer)
    fragments = int(flags[np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64, count=n_tokens)].sum())
    return {
        "tokens_per_char": n_tokens / n_chars if n_chars else float("nan"),
        "byte_fallback_share": fragments / n_tokens if n_tokens else 0.0,
        "encode_tokens_per_sec": n_tokens / seconds if seconds > 0 else float("inf"),
        "n_tokens": n_tokens,
        "n_chars": n_chars,
    }


SKIP_WORDS = {
    "skipped_existing": "already in the base",
    "skipped_base_script": "without a character of a new script",
    "skipped_covered": "made of characters the base covers",
    "skipped_special": "special or byte pieces",
    "skipped_unreachable": "unreachable (a part was skipped, or the base's normaliser rewrites it)",
    "skipped_in_sample": "occurring in the base-language sample",
    "skipped_surplus": "beyond add_pieces",
}


def extension_lines(stats: dict) -> list[str]:
    """What a vocabulary extension did, for people: pieces added, each skip reason, the re-segmented share."""
    admit = stats.get("admit", "strict")  # tokenizers extended before admission rules existed used "strict"
    scripts = ", ".join(stats.get("new_scripts") or []) or "-"
    lines = [f"{stats['added']} pieces added to {stats['base_pieces']} ({stats['final_pieces']} in all), "
             f"admit={admit}, new scripts: {scripts}"
             + (f", add_pieces={stats['add_pieces']}" if stats.get("add_pieces") else "")]
    skips = [f"{stats[key]} {words}" for key, words in SKIP_WORDS.items() if stats.get(key)]
    lines.append(f"skipped of the {stats['domain_pieces']} domain pieces: " + ("; ".join(skips) or "none"))
    if stats.get("check_texts"):
        share = stats.get("check_texts_changed_share", stats["check_texts_changed"] / stats["check_texts"])
        lines.append(f"base-language texts segmented differently: {stats['check_texts_changed']} of "
                     f"{stats['check_texts']} ({share:.2%})")
    return lines

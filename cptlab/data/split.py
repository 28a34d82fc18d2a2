"""Deterministic document-level train/held-out split, keyed by a hash of (seed, text).

Hashing the text (not the position) keeps each document on its side when others are added or removed, and puts
identical documents on the same side, so held-out text never leaks into training.
"""

from __future__ import annotations

import hashlib
import numbers

from cptlab.errors import CptlabError

_HASH_SPACE = float(1 << 64)


def doc_hash(text: str, seed: int = 0) -> int:
    """A 64-bit hash of (seed, text), uniform enough to compare against a share of 2**64."""
    # surrogatepass: a lone surrogate must hash (deterministically) rather than crash the split.
    digest = hashlib.blake2b(text.encode("utf-8", errors="surrogatepass"), digest_size=8, key=str(int(seed)).encode())
    return int.from_bytes(digest.digest(), "big")


def heldout_kind(heldout) -> str:
    """'share' for a float in (0, 1), 'count' for an integer >= 1; otherwise a CptlabError."""
    if isinstance(heldout, bool) or not isinstance(heldout, numbers.Real):
        raise CptlabError(f"heldout must be a share in (0, 1) or a document count >= 1, got {heldout!r}")
    if isinstance(heldout, numbers.Integral) or (float(heldout).is_integer() and heldout >= 1):
        if heldout < 1:
            raise CptlabError(f"heldout must be a share in (0, 1) or a document count >= 1, got {heldout!r}")
        return "count"
    if not 0 < heldout < 1:
        raise CptlabError(f"heldout must be a share in (0, 1) or a document count >= 1, got {heldout!r}")
    return "share"


def split_documents(docs: list[str], heldout: float | int, seed: int = 0) -> tuple[list[str], list[str]]:
    """(train, held-out): each side keeps the original order.

    A share holds out the documents whose hash falls below `heldout * 2**64` (at least the one with the smallest
    hash); a count holds out the `heldout` distinct texts with the smallest hashes (with all their copies).
    """
    kind = heldout_kind(heldout)
    hashes = {text: doc_hash(text, seed) for text in docs}  # one entry per distinct text
    if kind == "count":
        count = int(heldout)
        if count >= len(hashes):
            raise CptlabError(
                f"cannot hold out {count} documents from {len(docs)} documents ({len(hashes)} distinct): "
                "the training side would be empty; lower heldout"
            )
        held = set(sorted(hashes, key=lambda t: (hashes[t], t))[:count])
    else:
        threshold = heldout * _HASH_SPACE
        held = {text for text, h in hashes.items() if h < threshold}
        if not held and hashes:
            held = {min(hashes, key=lambda t: (hashes[t], t))}
    train = [d for d in docs if d not in held]
    val = [d for d in docs if d in held]
    if not train or not val:
        raise CptlabError(
            f"cannot hold out {heldout!r} of {len(docs)} documents ({len(hashes)} distinct): "
            f"the {'training' if not train else 'held-out'} side would be empty; add documents or change heldout"
        )
    return train, val

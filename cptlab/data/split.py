"""Deterministic document-level train/held-out split, keyed by a hash of (seed, text).

Hashing the text (not the position) keeps each document on its side when others are added or removed, and puts
identical documents on the same side, so held-out text never leaks into training.
"""

from __future__ import annotations

import hashlib
import numbers
import os
from collections.abc import Iterable

from cptlab.errors import CptlabError

_HASH_SPACE = float(1 << 64)


def doc_hash(text: str, seed: int = 0) -> int:
    """A 64-bit hash of (seed, text), uniform enough to compare against a share of 2**64."""
    # surrogatepass: a lone surrogate must hash (deterministically) rather than crash the split.
    digest = hashlib.blake2b(text.encode("utf-8", errors="surrogatepass"), digest_size=8, key=str(int(seed)).encode())
    return int.from_bytes(digest.digest(), "big")


def share_threshold(heldout: float) -> float:
    """A held-out share as a hash threshold: a document is held out when its `doc_hash` is below it."""
    return heldout * _HASH_SPACE


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
        threshold = share_threshold(heldout)
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


def documents_sha256(docs: Iterable[str]) -> str:
    """A hash of a list of documents, in order (each length-prefixed): which held-out documents a split
    chose, independent of the tokenizer, so two runs can tell whether they were scored on the same text."""
    h = hashlib.sha256()
    for text in docs:
        blob = text.encode("utf-8", errors="surrogatepass")
        h.update(len(blob).to_bytes(8, "big"))
        h.update(blob)
    return h.hexdigest()


def leaks_from_base(base: dict, run: dict, base_dir: str = "the base model") -> str | None:
    """Why evaluating `run`'s held-out documents would score documents `base` was trained on, or None.

    Both are split records as `cptlab_split.json` / summary.json `split` hold them: `{"split_seed": s,
    "domains": {name: {"sources": [...], "heldout": h, "max_docs": m, ...}}}`. A run domain is checked
    against every base domain that shares a source with it. A document's side depends only on its own
    hash under the split seed, so held-out sets with the same seed are nested: with the same seed, a
    held-out share no larger than the base's (or, on the same documents, a count no larger) only holds
    out documents the base held out too. Anything else on shared sources — another seed, a larger
    share — would evaluate on documents the base trained on. Other cases (no shared source, a count
    against a share) cannot be told from the records and pass."""
    base_seed, run_seed = base.get("split_seed"), run.get("split_seed")
    for name, mine in (run.get("domains") or {}).items():
        sources = set(mine.get("sources") or ())
        for base_name, theirs in (base.get("domains") or {}).items():
            shared = sorted(sources & set(theirs.get("sources") or ()))
            if not shared:
                continue
            where = f"data.domains.{name} shares {', '.join(shared)} with domain '{base_name}' of {base_dir}"
            if base_seed is not None and run_seed != base_seed:
                return (f"{where}, which was split with data.split_seed={base_seed}, this run with "
                        f"data.split_seed={run_seed}: its held-out documents would include ones the base trained "
                        f"on; set data.split_seed={base_seed}")
            h_run, h_base = mine.get("heldout"), theirs.get("heldout")
            try:
                kinds = heldout_kind(h_run), heldout_kind(h_base)
            except CptlabError:
                continue
            same_docs = (sorted(sources) == sorted(theirs.get("sources") or ())
                         and mine.get("max_docs") == theirs.get("max_docs"))
            if kinds == ("share", "share") or (kinds == ("count", "count") and same_docs):
                if h_run > h_base:
                    return (f"{where}: this run holds out {h_run!r}, the base held out only {h_base!r}, so the "
                            f"extra held-out documents are ones the base trained on; set "
                            f"data.domains.{name}.heldout <= {h_base!r}")
    return None


# -- evaluation-only domains (role eval) -------------------------------------------------------------------------


def check_eval_sources(domains: dict[str, tuple[str, list[str]]]) -> None:
    """Refuse, before anything is read, an eval-role domain that reads a source a training domain reads too:
    `domains` is {name: (role, sources)}. Sources are compared by what they resolve to (the same demo corpus or
    hub dataset, or the same file reached through another path, glob or directory)."""
    from cptlab.data.sources import resolve_source

    def targets(source: str) -> set[str]:
        parts = resolve_source(str(source))
        return {f"{p.kind}:{p.target}" if p.kind in ("demo", "hf") else os.path.realpath(p.target) for p in parts}

    trained = {name: (role, set().union(*(targets(s) for s in sources))) for name, (role, sources) in domains.items()
               if role != "eval"}
    for name, (role, sources) in domains.items():
        if role != "eval":
            continue
        for source in sources:
            for other, (other_role, read) in trained.items():
                shared = sorted(targets(source) & read)
                if shared:
                    raise CptlabError(
                        f"data.domains.{name}.sources: {source} is also read by domain '{other}' (role {other_role}; "
                        f"{shared[0]}): an evaluation-only domain must be text the run never trains on")


def check_eval_overlap(domains, seed: int) -> None:
    """Refuse an eval-role domain any of whose documents a training domain trains on (the same text in another
    file): its documents' split hashes against those each training shard recorded while it was built
    (DomainTokens.train_doc_hashes), so no corpus is read again. `domains`: the run's DomainTokens."""
    import numpy as np

    evals = [d for d in domains if d.role == "eval"]
    for domain in evals:
        texts = {doc_hash(text, seed): text for text in domain.heldout_texts()}
        hashes = np.array(sorted(texts), dtype=np.uint64)
        for other in (d for d in domains if d.role != "eval"):
            shared = []
            for trained in other.train_doc_hashes():
                if len(trained):
                    at = np.minimum(np.searchsorted(trained, hashes), len(trained) - 1)
                    shared.extend(hashes[trained[at] == hashes].tolist())
            if shared:
                example = " ".join(texts[int(shared[0])].split())[:60]
                raise CptlabError(
                    f"data.domains.{domain.name}: {len(set(shared))} of its {len(hashes)} documents are training "
                    f"documents of domain '{other.name}' (role {other.role}), e.g. \"{example}\": an evaluation-only "
                    f"domain must be text the run never trains on")

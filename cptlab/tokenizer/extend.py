"""Extend a SentencePiece vocabulary for a new domain (Cui et al. 2023) without changing how the base
segments the text it already covers: only pieces holding a character the base spells in bytes are appended."""

from __future__ import annotations

import copy
import itertools
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from sentencepiece import sentencepiece_model_pb2 as spm_pb2
from tokenizers import normalizers

from cptlab.errors import CptlabError
from cptlab.tokenizer.hf import (
    BPE_TYPE,
    NORMAL,
    TRICKY_TEXTS,
    UNIGRAM,
    USER_DEFINED,
    _read_proto,
    export_hf_tokenizer,
    verify_export,
)
from cptlab.tokenizer.spm import MODEL_FILE, load_spm, train_spm
from cptlab.utils.io import atomic_write_bytes

MODEL_TYPE_NAMES = {BPE_TYPE: "bpe", UNIGRAM: "unigram"}
# Appended unigram scores keep the domain model's spacing but must stay strictly decreasing (float32).
MIN_SCORE_STEP = 1e-3
# The merged export is also checked on this many leading domain documents (each cut to this length).
DOMAIN_CHECK_DOCS, DOMAIN_CHECK_CHARS = 200, 2000
CJK_CHECK_TEXTS = [
    "中华人民共和国成立于1949年。",
    "我们今天去北京，明天回上海。",
    "  缩进的中文\n第二行\t制表符 English mixed 中文 🙂",
    "「引号」、《书名》和——破折号……",
]


def extend_spm(
    base_model: Path,
    texts: Iterable[str],
    out_dir: Path,
    *,
    vocab_size: int,
    model_type: str | None = None,
    character_coverage: float = 0.9995,
    seed: int = 0,
    check_texts: list[str] | None = None,
) -> dict:
    """Train a SentencePiece model of `vocab_size` pieces on the domain `texts`, append its useful pieces to
    the base model, and write `out_dir/tokenizer.model` plus its verified HF export; return the merge stats.

    `model_type` is the domain model's type and must be the base's (default): appended scores are merge
    priorities for BPE and log-probabilities for unigram, and one kind cannot stand in for the other.
    `check_texts` (a base-language sample) must encode exactly as with the base wherever the base covers
    every character; a difference raises CptlabError. The stats count the sample's texts ("check_texts")
    and those that do change ("check_texts_changed"), which is only possible around characters the base
    spells in bytes (an emoji or a Chinese word quoted in English).
    """
    base_model, out_dir = Path(base_model), Path(out_dir)
    base = _read_proto(base_model)
    base_type = MODEL_TYPE_NAMES.get(base.trainer_spec.model_type)
    if base_type is None:
        raise CptlabError(
            f"{base_model}: only bpe and unigram SentencePiece models can be extended "
            f"(model_type={base.trainer_spec.model_type})"
        )
    model_type = model_type or base_type
    if model_type != base_type:
        raise CptlabError(
            f"tokenizer.model_type={model_type!r} does not match the base {base_model}, a {base_type} model; "
            f"set tokenizer.model_type={base_type} (or leave it unset)"
        )

    sample: list[str] = []
    with tempfile.TemporaryDirectory(prefix="cptlab-domain-spm-") as tmp:
        domain_model = train_spm(
            keep_sample(texts, sample), Path(tmp), vocab_size=vocab_size, model_type=model_type,
            character_coverage=character_coverage, seed=seed,
        )  # fmt: skip
        domain = _read_proto(domain_model)
    merged, stats = merge_protos(base, domain)
    if stats["added"] == 0:
        raise CptlabError(
            f"tokenizer.vocab_size={vocab_size} adds nothing to {base_model}: none of the "
            f"{stats['domain_pieces']} domain pieces holds a character the base lacks; raise tokenizer.vocab_size "
            "or check that the domain texts differ from the base language"
        )

    out_dir.mkdir(parents=True, exist_ok=True)
    merged_model = out_dir / MODEL_FILE
    atomic_write_bytes(merged_model, merged.SerializeToString())
    stats["check_texts"] = len(check_texts or [])
    stats["check_texts_changed"] = 0
    if check_texts:
        changed = check_same_segmentation(base_model, merged_model, check_texts, covered_characters(base))
        stats["check_texts_changed"] = changed
    export_hf_tokenizer(merged_model, out_dir)
    verify_export(merged_model, out_dir, TRICKY_TEXTS + CJK_CHECK_TEXTS + sample)
    return stats


def keep_sample(texts: Iterable[str], sample: list[str]) -> Iterator[str]:
    """Pass `texts` through, keeping (shortened copies of) the first documents for the export check."""
    for doc in texts:
        if len(sample) < DOMAIN_CHECK_DOCS:
            sample.append(doc[:DOMAIN_CHECK_CHARS])
        yield doc


def covered_characters(proto: spm_pb2.ModelProto) -> set[str]:
    """Characters the model encodes as a piece of their own, i.e. without falling back to bytes or <unk>."""
    return {p.piece for p in proto.pieces if p.type in (NORMAL, USER_DEFINED) and len(p.piece) == 1}


def merge_protos(base: spm_pb2.ModelProto, domain: spm_pb2.ModelProto) -> tuple[spm_pb2.ModelProto, dict]:
    """A copy of `base` with the domain pieces appended that hold at least one character `base` does not cover.

    Why that rule keeps base-language segmentation: every such piece contains a character that never
    occurs in (normalised) text made of covered characters, so it can never match there. BPE merges
    are looked up by the concatenated string and the unigram lattice by substring, so on covered text
    the merged model sees exactly the base's candidates. Pieces made only of covered characters (whitespace
    runs, digit groups, re-merges of base pieces) would be candidates there, so they are skipped.
    """
    existing = {p.piece for p in base.pieces}
    covered = covered_characters(base)
    charsmap = base.normalizer_spec.precompiled_charsmap
    normalizer = normalizers.Precompiled(charsmap) if charsmap else None
    stats = dict(
        base_pieces=len(base.pieces), domain_pieces=len(domain.pieces), added=0, skipped_existing=0,
        skipped_covered=0, skipped_special=0, skipped_unreachable=0, final_pieces=len(base.pieces),
    )  # fmt: skip

    candidates = []
    for index, piece in enumerate(domain.pieces):
        if piece.type != NORMAL:
            stats["skipped_special"] += 1
        elif piece.piece in existing:
            stats["skipped_existing"] += 1
        elif set(piece.piece) <= covered:
            stats["skipped_covered"] += 1
        elif normalizer is not None and normalizer.normalize_str(piece.piece) != piece.piece:
            # The base normalises text before segmenting, so a piece its normaliser rewrites never matches.
            stats["skipped_unreachable"] += 1
        else:
            candidates.append((index, piece))
    if base.trainer_spec.model_type == BPE_TYPE:
        candidates, unreachable = _reachable(base, candidates)
        stats["skipped_unreachable"] += unreachable

    # Highest domain score first: BPE merge priority or unigram probability, as the domain model ranks them.
    candidates.sort(key=lambda item: (-item[1].score, item[0]))
    merged = copy.deepcopy(base)
    floor = min(p.score for p in base.pieces)
    top = candidates[0][1].score if candidates else 0.0
    previous = floor
    for rank, (_, piece) in enumerate(candidates):
        if base.trainer_spec.model_type == BPE_TYPE:
            # Below every base piece, so no new merge outranks a base merge, and all distinct, because
            # SentencePiece breaks score ties by piece position and the HF export by merge order.
            score = floor - 1.0 - rank
        else:
            # The domain's log-probabilities, shifted below the base's: its relative preferences stay.
            score = min(floor - 1.0 + (piece.score - top), previous - MIN_SCORE_STEP)
        previous = score
        merged.pieces.append(spm_pb2.ModelProto.SentencePiece(piece=piece.piece, score=score, type=NORMAL))
    merged.trainer_spec.vocab_size = len(merged.pieces)
    stats["added"] = len(candidates)
    stats["final_pieces"] = len(merged.pieces)
    return merged, stats


def _reachable(base: spm_pb2.ModelProto, candidates: list) -> tuple[list, int]:
    """The BPE candidates the merged model can build: single characters, and pieces with a split into two
    pieces it can build. (A domain piece whose parts were skipped as covered may have no such split.)"""
    known = {p.piece for p in base.pieces if p.type == NORMAL}
    known.update(piece.piece for _, piece in candidates if len(piece.piece) == 1)
    kept, dropped = [], 0
    # Domain BPE lists a piece after the pieces it was merged from, so one pass in domain order suffices.
    for index, piece in sorted(candidates, key=lambda item: item[0]):
        text = piece.piece
        if len(text) == 1 or any(text[:cut] in known and text[cut:] in known for cut in range(1, len(text))):
            known.add(text)
            kept.append((index, piece))
        else:
            dropped += 1
    return kept, dropped


def covered_runs(text: str, covered: set[str], escaped_space: bool = True) -> list[str]:
    """The maximal runs of `text` whose characters are all covered (a space counts as "▁")."""
    def ok(char: str) -> bool:
        return ("▁" if escaped_space and char == " " else char) in covered

    return ["".join(run) for is_ok, run in itertools.groupby(text, key=ok) if is_ok]


def check_same_segmentation(base_model: Path, merged_model: Path, texts: list[str], covered: set[str]) -> int:
    """Raise CptlabError unless the merged model encodes every covered run of `texts` exactly like the base;
    return how many whole texts encode differently (each has a character the base spells in bytes).

    Only covered runs must match: around a character the base spells in bytes the merged model may
    rightly use a new piece, and that is the point of extending.
    """
    escaped = _read_proto(base_model).normalizer_spec.escape_whitespaces
    runs = [run for text in texts for run in covered_runs(text, covered, escaped)]
    base_sp, merged_sp = load_spm(base_model), load_spm(merged_model)
    for run, before, after in zip(runs, base_sp.encode(runs), merged_sp.encode(runs)):
        if before != after:
            raise segmentation_error(merged_model, run, merged_sp.id_to_piece(after), base_sp.id_to_piece(before))
    return sum(a != b for a, b in zip(base_sp.encode(texts), merged_sp.encode(texts)))


def segmentation_error(where: Path, text: str, got: list[str], expected: list[str]) -> CptlabError:
    shown = text if len(text) <= 80 else text[:80] + "..."
    return CptlabError(
        f"extended tokenizer {where} segments base-language text differently from its base: "
        f"{shown!r} -> {got[:8]} instead of {expected[:8]}"
    )

"""Extend a SentencePiece vocabulary for a new domain (Cui et al. 2023) without changing how the base segments
base-language text: a new piece is appended only if it can never occur in that text.

Why a piece that never occurs in a text cannot change its segmentation: SentencePiece BPE merges two adjacent
symbols only into a piece whose string is their concatenation, a substring of the (normalised, "▁"-escaped)
text, and the unigram lattice only holds pieces matching substrings of it. A new piece P whose string is not a
substring of the normalised text T never enters the merge loop or the lattice of T, and T segments exactly as
with the base (new BPE merges also rank below every base merge). So each admission rule (`tokenizer.admit`)
names a set F of "foreign" characters, admits only pieces holding at least one character of F, and thereby
guarantees: **text whose normalised form holds no character of F segments exactly as with the base.**

- `script` (and `auto` without a sample): F = the characters of scripts foreign to the base (see
  cptlab.tokenizer.scripts: a script is the base's own when it holds >= 10% of the base's multi-character
  pieces; Common characters, i.e. digits, punctuation, spaces, "▁", emoji, are never foreign). On a Llama-style
  English base that spells a thousand Chinese characters as pieces of their own, every new Chinese piece
  ("中国", "▁中", "2024年", "，我们") is admitted, and English or code without a CJK character is untouched.
- `auto` (the default): given a base-language sample (a run's replay domains), the sample's dominant scripts
  also count as the base's, F also holds the Common characters (punctuation, symbols) the base spells in bytes
  that the normalised sample never uses (the curly quotes and ellipses of Chinese text, for an ASCII-only
  base), and a piece that occurs
  in the normalised sample is skipped too, so the sample itself, Chinese quotes included, segments exactly as
  before.
- `strict`: F = the characters the base spells in bytes (or <unk>): only pieces holding such a character.
  Keeps even text that quotes covered Chinese characters, at the price of most of the benefit.
- `all`: every new piece (the Chinese-LLaMA recipe). Re-segments base-language text; the stats count how much.

Every rule also skips pieces the base already has, special/byte pieces, pieces the base's normaliser rewrites,
and (BPE) pieces the merged model cannot build from two pieces it has. `add_pieces` asks for an exact number
of new pieces: the domain model is trained with room for the skipped ones and the best N admissible pieces are
kept (BPE: in merge order, which is exactly what a smaller BPE training would have learned; unigram: by score).
"""

from __future__ import annotations

import copy
import itertools
import math
import re
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sentencepiece import sentencepiece_model_pb2 as spm_pb2
from tokenizers import normalizers

from cptlab.errors import CptlabError
from cptlab.tokenizer.hf import (
    BPE_TYPE,
    NORMAL,
    TRICKY_TEXTS,
    UNIGRAM,
    UNUSED,
    USER_DEFINED,
    _read_proto,
    build_normalizer,
    export_hf_tokenizer,
    verify_export,
)
from cptlab.tokenizer.scripts import COMMON, base_scripts, script_of
from cptlab.tokenizer.spm import BYTE_PIECES, MODEL_FILE, check_vocab_size, load_spm, train_spm
from cptlab.utils.io import atomic_write_bytes

MODEL_TYPE_NAMES = {BPE_TYPE: "bpe", UNIGRAM: "unigram"}
OTHER_MODEL_TYPES = {3: "word", 4: "char"}
SKIP_REASONS = ("skipped_special", "skipped_existing", "skipped_base_script", "skipped_covered",
                "skipped_unreachable", "skipped_in_sample", "skipped_surplus")  # fmt: skip
# Appended unigram scores keep the domain model's spacing but must stay strictly decreasing (float32).
MIN_SCORE_STEP = 1e-3
# The merged export is also checked on this many leading domain documents (each cut to this length).
DOMAIN_CHECK_DOCS, DOMAIN_CHECK_CHARS = 200, 2000
# Before training, this much of the domain corpus is read to see that it is foreign to the base: at least this
# share of its non-space characters (a new script's text is mostly foreign characters).
PEEK_DOCS, PEEK_CHARS = 2000, 1_000_000
MIN_FOREIGN_SHARE = 0.01
# add_pieces: trainings of the domain model at most (each sized from the previous one's yield).
MAX_TRAININGS = 3
# The sample is searched this far around foreign characters: longer than any SentencePiece piece (its trainer's
# max_sentencepiece_length is 16).
_MAX_PIECE_CHARS = 64
CJK_CHECK_TEXTS = [
    "中华人民共和国成立于1949年。",
    "我们今天去北京，明天回上海。",
    "  缩进的中文\n第二行\t制表符 English mixed 中文 🙂",
    "「引号」、《书名》和——破折号……",
]


@dataclass
class Admission:
    """An admission rule resolved against one base: which characters are foreign (a new piece must hold one),
    and, for `auto`, the stretches of the base-language sample around foreign characters (a new piece must
    not occur in them)."""

    rule: str
    foreign: Callable[[str], bool]
    base_scripts: list[str] = field(default_factory=list)
    sample_windows: str | None = None

    def safe(self, char: str) -> bool:
        """Whether base-language text holding `char` keeps its segmentation (None of F)."""
        return self.rule != "all" and not self.foreign(char)

    def new_scripts(self, pieces: Iterable[str]) -> list[str]:
        return sorted({script_of(c) for piece in pieces for c in piece if self.foreign(c)})


def make_admission(rule: str, covered: set[str], base_pieces: Iterable[str], sample: list[str] | None = None,
                   normalize: Callable[[str], str] | None = None, window: int = 0,
                   sample_chars: set[str] | None = None) -> Admission:
    """Resolve `rule` for a base whose covered characters are `covered` and whose pieces (decoded) are
    `base_pieces`; `sample` is base-language text (auto), `normalize` the base's normaliser and `window` the
    longest new piece in characters (the sample is searched within that distance of foreign characters).
    `sample_chars` are the characters of base-language text (auto; default: those of `sample`), usually of
    far more text than the sample (cptlab.tokenizer.prepare reads them). `rule` (tokenizer.admit) is checked
    by the run or the front end: a rule not resolved here is a ValueError, before any domain text is read."""
    if rule == "strict":
        return Admission(rule, _cached(lambda c: c not in covered))
    if rule == "all":
        return Admission(rule, lambda c: True)
    if rule not in ("auto", "script"):
        raise ValueError(f"unknown admission rule {rule!r} (tokenizer.admit)")
    scripts = base_scripts(base_pieces, sample if rule == "auto" else None)
    if rule == "auto" and sample:
        # Common characters (punctuation, symbols) the base spells in bytes and its language, as sampled, never
        # uses: e.g. the curly quotes and ellipses of Chinese text for an ASCII-only base. Letters of the base's
        # own scripts never count, however rare: a small sample cannot show they are unused.
        seen = {c for text in sample for c in text} if sample_chars is None else set(sample_chars)
        if normalize is not None:
            seen.update(*map(normalize, list(seen)))

        def foreign(c: str) -> bool:
            script = script_of(c)
            if script == COMMON:
                return c not in covered and c not in seen
            return script not in scripts
    else:
        def foreign(c: str) -> bool:
            return script_of(c) not in scripts and script_of(c) != COMMON
    admission = Admission(rule, _cached(foreign), base_scripts=sorted(scripts))
    if rule == "auto" and sample:
        admission.sample_windows = foreign_windows(sample, admission.foreign, normalize, window)
    return admission


def _cached(predicate: Callable[[str], bool]) -> Callable[[str], bool]:
    memo: dict[str, bool] = {}

    def cached(char: str) -> bool:
        found = memo.get(char)
        if found is None:
            found = memo[char] = predicate(char)
        return found

    return cached


def foreign_windows(texts: list[str], foreign: Callable[[str], bool], normalize: Callable[[str], str] | None,
                    window: int) -> str:
    """The parts of the normalised `texts` within `window` characters of a foreign character, joined by NUL.

    A piece holding a foreign character occurs in a text only around one, so searching these windows finds
    every occurrence (a match across a NUL only skips one piece more than needed)."""
    parts = []
    for text in texts:
        text = normalize(text) if normalize else text
        bad = {c for c in set(text) if foreign(c)}
        if not bad:
            continue
        spans = [(max(0, m.start() - window), m.end() + window)
                 for m in re.finditer("[" + "".join(map(re.escape, sorted(bad))) + "]", text)]  # fmt: skip
        start, end = spans[0]
        for lo, hi in spans[1:]:
            if lo > end:
                parts.append(text[start:end])
                start = lo
            end = max(end, hi)
        parts.append(text[start:end])
    return "\x00".join(parts)


def peek_foreign(texts: Iterable[str], admission: Admission) -> tuple[Iterator[str], bool, int]:
    """(the same texts, whether the leading PEEK_DOCS / PEEK_CHARS of them are foreign to the base, docs read).

    Foreign means at least MIN_FOREIGN_SHARE of their non-space characters are foreign (always for admit=all):
    a corpus with a handful of foreign characters (Baichuan's Chinese holds "Ⅱ") is in the base's language,
    and training domain vocabularies on it only to find no admissible pieces costs minutes."""
    iterator = iter(texts)
    head, chars = [], 0
    for doc in iterator:
        head.append(doc)
        chars += len(doc)
        if len(head) >= PEEK_DOCS or chars >= PEEK_CHARS:
            break
    found = admission.rule == "all" or foreign_share(head, admission) >= MIN_FOREIGN_SHARE
    return itertools.chain(head, iterator), found, len(head)


def foreign_share(texts: list[str], admission: Admission) -> float:
    """The share of the non-space characters of `texts` that are foreign to the base."""
    counts = Counter(c for text in texts for c in text if not c.isspace())
    total = sum(counts.values())
    return sum(n for c, n in counts.items() if admission.foreign(c)) / total if total else 0.0


def nothing_foreign_error(admission: Admission, base: Path, docs: int) -> CptlabError:
    what = ("characters the base spells in bytes" if admission.rule == "strict" else
            f"characters of a script foreign to the base (it speaks {', '.join(admission.base_scripts) or 'none'})")
    return CptlabError(
        f"the new-domain corpus adds nothing to {base} under tokenizer.admit={admission.rule}: fewer than "
        f"{MIN_FOREIGN_SHARE:.0%} of the characters of its first {docs} documents are {what}, so it is in the "
        "base's own language; use tokenizer.admit=all to re-segment base-language text anyway"
    )


def training_size(add_pieces: int, overlap: int) -> int:
    """The first domain vocabulary size for `add_pieces`: the pieces asked for, the 259 byte and special
    pieces, the base pieces the domain will learn again (`overlap`) and 5% to spare."""
    return add_pieces + BYTE_PIECES + 3 + overlap + math.ceil(0.05 * add_pieces)


def train_to_target(train_and_merge, docs, size: int, *, add_pieces: int | None, admit: str, unit: str,
                    domain_size, again) -> tuple:
    """Train the domain model on `docs` at `size` and merge it (`train_and_merge(docs, size)` -> (domain,
    merged, stats)); for `add_pieces`, train again larger (on `again()`, the spooled corpus) until that many
    admissible pieces come out, at most MAX_TRAININGS times. Returns (domain, merged, stats, trainings)."""
    for trainings in range(1, MAX_TRAININGS + 1):
        domain, merged, stats = train_and_merge(docs, size)
        for _ in docs:  # the spool must hold the whole corpus before it is read again
            pass
        admissible = stats["added"] + stats["skipped_surplus"]
        if add_pieces is None or admissible >= add_pieces:
            return domain, merged, stats, trainings
        if domain_size(domain) < size or trainings == MAX_TRAININGS:
            # hard_vocab_limit=False: a corpus too small for `size` gives fewer pieces, so more is not there.
            raise CptlabError(
                f"tokenizer.add_pieces={add_pieces} is more than the new-domain corpus yields: a domain model "
                f"of {domain_size(domain)} {unit} gives {admissible} {unit} that tokenizer.admit={admit} lets "
                f"in; ask for at most {admissible} or give more text"
            )
        size = math.ceil(size * add_pieces / max(admissible, 1) * 1.05) + 64
        docs = again()
    raise AssertionError("unreachable")


def extend_spm(
    base_model: Path,
    texts: Iterable[str],
    out_dir: Path,
    *,
    vocab_size: int | None = None,
    add_pieces: int | None = None,
    admit: str = "auto",
    model_type: str | None = None,
    character_coverage: float = 0.9995,
    seed: int = 0,
    check_texts: list[str] | None = None,
    base_chars: set[str] | None = None,
) -> dict:
    """Train a SentencePiece model on the domain `texts`, append the new pieces `admit` lets in (see the module
    docstring) to the base model, and write `out_dir/tokenizer.model` plus its verified HF export; return the
    merge stats.

    `add_pieces` appends exactly that many pieces (the domain model is sized for it, see `training_size`);
    otherwise `vocab_size` is the domain model's size and every admitted piece is appended. `model_type` is the
    domain model's type and must be the base's (default): appended scores are merge priorities for BPE and
    log-probabilities for unigram. `check_texts` (a base-language sample) is encoded with both models: text
    the rule guarantees must encode identically (else CptlabError; never for admit=all), and the stats count
    the texts that change ("check_texts_changed", "check_texts_changed_share"). `base_chars` (admit=auto) are
    the characters of all the base-language text at hand, default those of `check_texts`.
    """
    if add_pieces is None and vocab_size is None:
        raise CptlabError("tokenizer=extend needs tokenizer.add_pieces or tokenizer.vocab_size")
    if add_pieces is not None and add_pieces < 1:
        raise CptlabError(f"tokenizer.add_pieces={add_pieces} must be a positive number of pieces")
    if add_pieces is None:
        check_vocab_size(vocab_size)
    base_model, out_dir = Path(base_model), Path(out_dir)
    base = _read_proto(base_model)
    base_type = MODEL_TYPE_NAMES.get(base.trainer_spec.model_type)
    if base_type is None:
        kind = OTHER_MODEL_TYPES.get(base.trainer_spec.model_type, f"model_type={base.trainer_spec.model_type}")
        raise CptlabError(f"{base_model} is a SentencePiece {kind} model: only bpe and unigram models can be extended")
    model_type = model_type or base_type
    if model_type != base_type:
        raise CptlabError(
            f"tokenizer.model_type={model_type!r} does not match the base {base_model}, a {base_type} model; "
            f"set tokenizer.model_type={base_type} (or leave it unset)"
        )
    normalize = build_normalizer(base).normalize_str
    admission = make_admission(admit, covered_characters(base), (p.piece for p in base.pieces if p.type == NORMAL),
                               check_texts, normalize, window=_MAX_PIECE_CHARS, sample_chars=base_chars)  # fmt: skip
    texts, found, peeked = peek_foreign(texts, admission)
    if not found:
        raise nothing_foreign_error(admission, base_model, peeked)

    sample: list[str] = []
    with tempfile.TemporaryDirectory(prefix="cptlab-domain-spm-") as tmp:
        spool = Path(tmp) / "corpus.txt"
        size = vocab_size if add_pieces is None else training_size(add_pieces, _overlap(base))
        lines = _spooled(keep_sample(texts, sample), spool) if add_pieces is not None else keep_sample(texts, sample)
        def train_and_merge(docs, size):
            domain = _read_proto(train_spm(docs, Path(tmp), vocab_size=size, model_type=model_type,
                                           character_coverage=character_coverage, seed=seed))  # fmt: skip
            return domain, *merge_protos(base, domain, admission, limit=add_pieces)

        domain, merged, stats, trainings = train_to_target(
            train_and_merge, lines, size, add_pieces=add_pieces, admit=admit, unit="pieces",
            domain_size=lambda d: len(d.pieces), again=lambda: _read_lines(spool),
        )  # fmt: skip
    if stats["added"] == 0:
        raise CptlabError(
            f"tokenizer.vocab_size={vocab_size} adds nothing to {base_model} under tokenizer.admit={admit}: none of "
            f"the {stats['domain_pieces']} domain pieces is admissible (skipped: {_skips(stats)}); raise "
            "tokenizer.vocab_size or check that the domain texts differ from the base language"
        )
    stats.update(domain_vocab_size=len(domain.pieces), domain_trainings=trainings, add_pieces=add_pieces)

    out_dir.mkdir(parents=True, exist_ok=True)
    merged_model = out_dir / MODEL_FILE
    atomic_write_bytes(merged_model, merged.SerializeToString())
    stats.update(check_stats(check_same_segmentation(base_model, merged_model, check_texts or [], admission),
                             len(check_texts or [])))  # fmt: skip
    export_hf_tokenizer(merged_model, out_dir)
    verify_export(merged_model, out_dir, TRICKY_TEXTS + CJK_CHECK_TEXTS + sample)
    return stats


def check_stats(changed: int, total: int) -> dict:
    return dict(check_texts=total, check_texts_changed=changed,
                check_texts_changed_share=round(changed / total, 6) if total else 0.0)  # fmt: skip


def _skips(stats: dict) -> str:
    return ", ".join(f"{key.removeprefix('skipped_')} {stats[key]}" for key in SKIP_REASONS if stats.get(key))


def _overlap(base: spm_pb2.ModelProto) -> int:
    """About how many domain pieces the base has already: mostly single characters (the base's share of the new
    script, digits, punctuation), so their number."""
    return sum(1 for p in base.pieces if p.type == NORMAL and len(p.piece) == 1)


def _spooled(texts: Iterable[str], path: Path) -> Iterator[str]:
    """Pass `texts` through, also writing their lines to `path` so a second training can read them again."""
    with path.open("w", encoding="utf-8") as spool:
        for doc in texts:
            spool.write(doc + "\n")
            yield doc


def _read_lines(path: Path) -> Iterator[str]:
    with path.open(encoding="utf-8", newline="\n") as spool:
        for line in spool:
            yield line.rstrip("\n")


def keep_sample(texts: Iterable[str], sample: list[str]) -> Iterator[str]:
    """Pass `texts` through, keeping (shortened copies of) the first documents for the export check."""
    for doc in texts:
        if len(sample) < DOMAIN_CHECK_DOCS:
            sample.append(doc[:DOMAIN_CHECK_CHARS])
        yield doc


def covered_characters(proto: spm_pb2.ModelProto) -> set[str]:
    """Characters the model encodes as a piece of their own, i.e. without falling back to bytes or <unk>."""
    return {p.piece for p in proto.pieces if p.type in (NORMAL, USER_DEFINED) and len(p.piece) == 1}


def empty_stats(base_pieces: int, domain_pieces: int, admission: Admission) -> dict:
    return dict(base_pieces=base_pieces, domain_pieces=domain_pieces, added=0, **dict.fromkeys(SKIP_REASONS, 0),
                final_pieces=base_pieces, admit=admission.rule, base_scripts=admission.base_scripts,
                new_scripts=[])  # fmt: skip


def merge_protos(base: spm_pb2.ModelProto, domain: spm_pb2.ModelProto, admission: Admission | None = None,
                 limit: int | None = None) -> tuple[spm_pb2.ModelProto, dict]:
    """A copy of `base` with the domain pieces appended that `admission` (default: admit=script) lets in, at
    most `limit` of them (the best by the domain model's ranking), and the merge stats."""
    if admission is None:
        admission = make_admission("script", covered_characters(base), (p.piece for p in base.pieces))
    existing = {p.piece for p in base.pieces}
    charsmap = base.normalizer_spec.precompiled_charsmap
    normalizer = normalizers.Precompiled(charsmap) if charsmap else None
    stats = empty_stats(len(base.pieces), len(domain.pieces), admission)
    base_reason = "skipped_covered" if admission.rule == "strict" else "skipped_base_script"

    candidates = []
    for index, piece in enumerate(domain.pieces):
        text = piece.piece
        if piece.type != NORMAL:
            stats["skipped_special"] += 1
        elif text in existing:
            stats["skipped_existing"] += 1
        elif not any(map(admission.foreign, text)):
            stats[base_reason] += 1
        elif normalizer is not None and normalizer.normalize_str(text) != text:
            # The base normalises text before segmenting, so a piece its normaliser rewrites never matches.
            stats["skipped_unreachable"] += 1
        elif admission.sample_windows and text in admission.sample_windows:
            stats["skipped_in_sample"] += 1
        else:
            candidates.append((index, piece))
    candidates, unreachable, surplus = _select(base, candidates, limit)
    stats["skipped_unreachable"] += unreachable
    stats["skipped_surplus"] = surplus

    # Highest domain score first: BPE merge priority or unigram probability, as the domain model ranks them.
    candidates.sort(key=lambda item: (-item[1].score, item[0]))
    merged = copy.deepcopy(base)
    for piece, score in zip((piece for _, piece in candidates), appended_scores(base, candidates)):
        merged.pieces.append(spm_pb2.ModelProto.SentencePiece(piece=piece.piece, score=score, type=NORMAL))
    merged.trainer_spec.vocab_size = len(merged.pieces)
    stats["added"] = len(candidates)
    stats["final_pieces"] = len(merged.pieces)
    stats["new_scripts"] = admission.new_scripts(piece.piece for _, piece in candidates)
    return merged, stats


def score_floor(base: spm_pb2.ModelProto) -> float:
    """The lowest finite score of the base pieces an appended one competes with: normal and (BPE) unused pieces
    (SentencePiece BPE merges into unused pieces too, then splits them again; a unigram lattice leaves them out,
    and XLM-R-style vocabularies park them at -10000). Non-finite scores are left out: nothing finite lies below
    -inf, and such pieces keep their place at the very end either way."""
    kinds = (NORMAL, UNUSED) if base.trainer_spec.model_type == BPE_TYPE else (NORMAL,)
    return min((p.score for p in base.pieces if p.type in kinds and math.isfinite(p.score)), default=0.0)


def appended_scores(base: spm_pb2.ModelProto, candidates: list) -> list[float]:
    """The scores of the appended `candidates` (best first), each strictly below the previous one *as stored*:
    SentencePiece keeps scores as float32, where -1e9 - 1 ... -1e9 - 200 are four values (LLaMA-2 has pieces at
    -1e9), and SentencePiece breaks BPE score ties by position in the text while the HF export breaks them by
    merge rank, so a tie makes the two disagree.

    BPE: floor - 1 - rank, below `score_floor(base)` (so no new merge outranks a base merge), moved down to the
    next float32 below the previous score where float32 cannot hold it. Unigram: the domain model's own
    log-probabilities, kept MIN_SCORE_STEP apart with the same float32 rule. They need not lie below the base's:
    a new piece holds a foreign character, so it never enters the lattice of base-language text, and on new-domain
    text it must compete with the base's pieces (below them, it would lose wherever the base spells the text at
    all: an XLM-R-style base covering Chinese got no gain).
    """
    floor = score_floor(base)
    bpe = base.trainer_spec.model_type == BPE_TYPE
    previous = np.float32(floor if bpe else np.inf)
    scores = []
    for rank, (_, piece) in enumerate(candidates):
        wanted = floor - 1.0 - rank if bpe else min(piece.score, float(previous) - MIN_SCORE_STEP)
        score = np.float32(wanted)
        if not score < previous:
            with np.errstate(over="ignore"):  # the next float32 below the lowest finite one is -inf: refused below
                score = np.nextafter(previous, np.float32(-np.inf), dtype=np.float32)
        if not np.isfinite(score):
            raise CptlabError(
                f"the base's lowest score {floor:g} leaves no room below it in float32 (SentencePiece's score type) "
                f"for {len(candidates)} new pieces: {rank} fit; ask for fewer pieces (tokenizer.add_pieces)"
            )
        scores.append(float(score))
        previous = score
    return scores


def _select(base: spm_pb2.ModelProto, candidates: list, limit: int | None) -> tuple[list, int, int]:
    """(kept, unreachable, surplus): the candidates to append, at most `limit`.

    BPE keeps only pieces the merged model can build: single characters, and pieces with a split into two
    pieces it can build (a domain piece whose part was skipped may have none). Single characters come first
    (every longer piece is built from them), then longer pieces in the domain's merge order, which lists a
    piece after its parts, so one pass suffices and the first N are what a BPE of that size would have
    learned. Unigram keeps the best `limit` by score.
    """
    if base.trainer_spec.model_type != BPE_TYPE:
        ranked = sorted(candidates, key=lambda item: (-item[1].score, item[0]))
        kept = ranked if limit is None else ranked[:limit]
        return kept, 0, len(ranked) - len(kept)
    singles = sorted((c for c in candidates if len(c[1].piece) == 1), key=lambda item: (-item[1].score, item[0]))
    surplus = 0
    if limit is not None and len(singles) > limit:
        surplus, singles = len(singles) - limit, singles[:limit]
    known = {p.piece for p in base.pieces if p.type == NORMAL}
    known.update(piece.piece for _, piece in singles)
    kept, unreachable = list(singles), 0
    for index, piece in sorted((c for c in candidates if len(c[1].piece) > 1), key=lambda item: item[0]):
        text = piece.piece
        if limit is not None and len(kept) >= limit:
            surplus += 1
        elif any(text[:cut] in known and text[cut:] in known for cut in range(1, len(text))):
            known.add(text)
            kept.append((index, piece))
        else:
            unreachable += 1
    return kept, unreachable, surplus


def safe_runs(text: str, safe: Callable[[str], bool], escaped_space: bool = True) -> list[str]:
    """The maximal runs of `text` made of characters `safe` accepts (a space counts as "▁")."""
    def ok(char: str) -> bool:
        return safe("▁" if escaped_space and char == " " else char)

    return ["".join(run) for is_ok, run in itertools.groupby(text, key=ok) if is_ok]


def guarded_texts(texts: list[str], admission: Admission, escaped_space: bool) -> list[str]:
    """What must encode exactly as with the base: every text for auto with a sample (no new piece occurs in it),
    else the runs of each text free of foreign characters; nothing for admit=all."""
    if admission.rule == "all":
        return []
    if admission.sample_windows is not None:
        return list(texts)
    return [run for text in texts for run in safe_runs(text, admission.safe, escaped_space)]


def check_same_segmentation(base_model: Path, merged_model: Path, texts: list[str], admission: Admission) -> int:
    """Raise CptlabError unless the merged model encodes what `admission` guarantees (`guarded_texts`) exactly
    like the base; return how many whole `texts` encode differently."""
    if not texts:
        return 0
    escaped = _read_proto(base_model).normalizer_spec.escape_whitespaces
    guarded = guarded_texts(texts, admission, escaped)
    base_sp, merged_sp = load_spm(base_model), load_spm(merged_model)
    for run, before, after in zip(guarded, base_sp.encode(guarded), merged_sp.encode(guarded)):
        if before != after:
            raise segmentation_error(merged_model, run, merged_sp.id_to_piece(after), base_sp.id_to_piece(before))
    return sum(a != b for a, b in zip(base_sp.encode(texts), merged_sp.encode(texts)))


def segmentation_error(where: Path, text: str, got: list[str], expected: list[str]) -> CptlabError:
    shown = text if len(text) <= 80 else text[:80] + "..."
    return CptlabError(
        f"extended tokenizer {where} segments base-language text differently from its base: "
        f"{shown!r} -> {got[:8]} instead of {expected[:8]}"
    )

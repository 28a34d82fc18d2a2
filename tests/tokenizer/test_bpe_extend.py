"""Byte-level BPE extension: every base id (specials included) stays, base-language text segments as before,
Chinese gets shorter, decoding stays lossless, and the directory loads through AutoTokenizer."""

from __future__ import annotations

import json
import random

import pytest
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from cptlab.errors import CptlabError
from cptlab.tokenizer.bpe_extend import (
    CoveredText,
    NoText,
    ScriptText,
    check_same_segmentation,
    decoded_tokens,
    extend_bpe,
    merge_bpe,
    token_bytes,
)
from cptlab.tokenizer.extend import make_admission
from cptlab.tokenizer.hf import TRICKY_TEXTS, load_tokenizer
from cptlab.tokenizer.prepare import extension_stats, prepare_tokenizer

LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"
    r"\s+(?!\S)|\s+"
)
CHARS = (
    "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成"
    "会可主发年动同工也能下过子说产种面而方后多定"
)
WORDS = [CHARS[i : i + n] for n in (1, 2, 3) for i in range(0, len(CHARS) - n, n + 1)]
CJK_EMOJI = ["中文测试，日本語のテキスト、한국어", "emoji 🙂👍🏽 and a family 👨‍👩‍👧", "混合 text 中文\n\t  缩进 的 🙂",
             "的" * 40, "  的\n\n的 "]  # fmt: skip


def chinese_docs(n: int = 300, seed: int = 0) -> list[str]:
    rnd = random.Random(seed)
    weights = [1 / (rank + 1) for rank in range(len(WORDS))]
    return [
        "".join("".join(rnd.choices(WORDS, weights, k=rnd.randint(4, 12))) + rnd.choice("，。！") for _ in range(4))
        + rnd.choice(["", " hello 2024", "\n第二行"])
        for _ in range(n)
    ]


def build_base(path, docs, style: str):
    """A small English byte-level BPE with <|endoftext|> at id 0 and <|im_end|> after the model vocabulary."""
    if style == "gpt2":
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:  # Llama-3: regex split, then bytes; whole words in the vocabulary skip the merges
        tokenizer = Tokenizer(models.BPE(ignore_merges=True))
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])  # fmt: skip
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    tokenizer.train_from_iterator(docs, trainer)
    tokenizer.add_special_tokens(["<|im_end|>"])
    PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token="<|endoftext|>", additional_special_tokens=["<|im_end|>"],
        clean_up_tokenization_spaces=False,
    ).save_pretrained(str(path))  # fmt: skip
    return path


STYLES = ["gpt2", "llama3"]


@pytest.fixture(scope="module")
def bases(tmp_path_factory, make_docs):
    root = tmp_path_factory.mktemp("bbpe")
    return {style: build_base(root / style, make_docs(300), style) for style in STYLES}


@pytest.fixture(scope="module")
def extended(bases, tmp_path_factory, make_docs):
    root = tmp_path_factory.mktemp("bbpe-ext")
    out = {}
    for style, base in bases.items():
        stats = extend_bpe(base, chinese_docs(), root / style, vocab_size=1200, check_texts=make_docs(50, seed=3))
        out[style] = (base, root / style, stats)
    return out


@pytest.mark.parametrize("style", STYLES)
def test_base_ids_and_specials_are_kept(extended, style):
    base_dir, out, stats = extended[style]
    base, new = Tokenizer.from_file(str(base_dir / "tokenizer.json")), Tokenizer.from_file(str(out / "tokenizer.json"))
    base_vocab, new_vocab = base.get_vocab(with_added_tokens=True), new.get_vocab(with_added_tokens=True)
    assert all(new_vocab[token] == index for token, index in base_vocab.items())
    assert new.token_to_id("<|endoftext|>") == 0 and new.token_to_id("<|im_end|>") == 600
    added = sorted(set(new_vocab.values()) - set(base_vocab.values()))
    assert added == list(range(601, 601 + stats["added"])) and stats["added"] > 100
    assert (stats["check_texts"], stats["check_texts_changed"]) == (50, 0)
    assert sorted(new_vocab.values()) == list(range(len(new_vocab)))  # no holes
    base_merges = json.loads(base.to_str())["model"]["merges"]
    new_merges = json.loads(new.to_str())["model"]["merges"]
    assert new_merges[: len(base_merges)] == base_merges
    assert len(new_merges) == len(base_merges) + stats["merges_added"]
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.eos_token == "<|endoftext|>" and tok.eos_token_id == 0
    assert tok.convert_tokens_to_ids("<|im_end|>") == 600 and len(tok) == stats["final_pieces"]


@pytest.mark.parametrize("style", STYLES)
def test_base_language_segments_exactly_as_before(extended, make_docs, tricky_texts, style):
    base_dir, out, _ = extended[style]
    base, new = load_tokenizer(base_dir), load_tokenizer(out)
    english = make_docs(200, seed=7) + [t for t in tricky_texts + TRICKY_TEXTS if t.isascii()]
    english += ["hello world 2024, and the python <|endoftext|> x"]
    assert new(english)["input_ids"] == base(english)["input_ids"]


@pytest.mark.parametrize("style", STYLES)
def test_chinese_is_shorter_and_everything_round_trips(extended, tricky_texts, style):
    base_dir, out, _ = extended[style]
    base, new = load_tokenizer(base_dir), load_tokenizer(out)
    held_out = chinese_docs(50, seed=11)
    count = lambda tok: sum(len(ids) for ids in tok(held_out)["input_ids"])  # noqa: E731
    assert count(new) < 0.5 * count(base)
    for text in tricky_texts + TRICKY_TEXTS + CJK_EMOJI + held_out[:10]:
        assert new.decode(new.encode(text)) == text


def test_covered_text_knows_which_bytes_english_can_hold():
    covered = CoveredText(["Ġthe", "Ã©", "a"])  # "é" merged whole; ASCII always covered
    assert covered.possible(b" the") and covered.possible("é".encode())
    assert covered.possible(b"\xc3") and covered.possible(b"\xa9")  # halves of "é"
    assert not covered.possible("中".encode()) and not covered.possible(" 中".encode())
    assert not covered.possible("中".encode()[:2]) and not covered.possible(b"a" + "中".encode()[:1])
    assert not covered.possible("中".encode()[1:])
    assert covered.possible(b"\xa9 the") and not covered.possible(b"\xad the")
    assert token_bytes("Ġä¸Ń") == " 中".encode()


def test_script_text_knows_which_bytes_an_english_base_can_see():
    admission = make_admission("script", set(), ["Ġthe", "Ġand", "ing", "Ã©t"])
    assert admission.base_scripts == ["Latin"]
    text = ScriptText(admission)
    assert text.possible(b" the") and text.possible("é".encode()) and text.possible("€ 🙂".encode())
    assert text.possible("é".encode()[:1]) and text.possible(b"\xa9")  # Latin and Common hold these bytes
    assert not text.possible("中".encode()) and not text.possible(" 中".encode()) and not text.possible("，".encode())
    assert not text.possible("中".encode()[:2])  # only CJK code points start with these two bytes
    assert not text.possible(b"a" + "国".encode()[:1])  # E5 starts only CJK characters
    assert text.possible(b"a" + "中".encode()[:1])  # E4 also starts the (Common) Yijing hexagrams
    assert text.possible("中".encode()[1:]) and text.possible("中".encode()[2:])  # ... but ends others too
    assert not text.possible("中".encode()[1:] + b"a" + "国".encode())
    assert not NoText().possible(b" the")
    assert [*decoded_tokens(["Ġä¸Ń", "ä¸", "<|x|>"])] == [" 中", "", "<|x|>"]


def test_check_fires_when_new_merges_touch_english(bases, make_docs, tmp_path):
    # Appending the merges of a domain tokenizer unfiltered (English included) re-segments English.
    base_dir = bases["gpt2"]
    spec = json.loads((base_dir / "tokenizer.json").read_text())
    domain = Tokenizer(models.BPE())
    domain.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    domain.train_from_iterator(make_docs(300) + chinese_docs(), trainers.BpeTrainer(
        vocab_size=1500, show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))  # fmt: skip
    everything = make_admission("all", set(), [])
    naive, stats = merge_bpe(spec, json.loads(domain.to_str())["model"], NoText(), everything)
    assert stats["admit"] == "all" and "Latin" in stats["new_scripts"]
    base, naive = Tokenizer.from_file(str(base_dir / "tokenizer.json")), Tokenizer.from_str(json.dumps(naive))
    english = make_docs(100, seed=5)
    tokens = decoded_tokens(spec["model"]["vocab"])
    for rule in ("strict", "script", "auto"):
        admission = make_admission(rule, CoveredText(spec["model"]["vocab"]).chars, tokens, english)
        with pytest.raises(CptlabError, match="segments base-language text differently"):
            check_same_segmentation(base, naive, english, admission, tmp_path)
    assert 0 < check_same_segmentation(base, naive, english, everything, tmp_path) <= 100


@pytest.mark.parametrize("style", STYLES)
def test_rules_add_pieces_and_the_re_segmented_share(bases, make_docs, tmp_path, style):
    base_dir, english = bases[style], make_docs(60, seed=8)
    domain = chinese_docs() + ["龙凤呈祥，龙凤" + w for w in WORDS]
    check = english + ["The idiom 龙凤呈祥 wishes luck."]
    runs = {rule: extend_bpe(base_dir, domain, tmp_path / rule, vocab_size=1200, admit=rule, check_texts=check)
            for rule in ("auto", "script", "strict", "all")}  # fmt: skip
    auto, script, strict, every = runs["auto"], runs["script"], runs["strict"], runs["all"]
    assert auto["base_scripts"] == script["base_scripts"] == ["Latin"] and auto["new_scripts"] == ["CJK"]
    assert auto["check_texts_changed"] == 0 and auto["skipped_in_sample"] > 0
    assert (script["check_texts_changed"], script["check_texts_changed_share"]) == (1, round(1 / 61, 6))
    assert strict["skipped_covered"] > 0 and strict["skipped_base_script"] == 0
    assert every["added"] >= max(script["added"], strict["added"]) and min(script["added"], strict["added"]) > 100
    assert every["check_texts"] == 61 and every["check_texts_changed_share"] == round(
        every["check_texts_changed"] / 61, 6)
    for rule, stats in runs.items():
        new = load_tokenizer(tmp_path / rule)
        assert len(new) == stats["final_pieces"] == stats["base_pieces"] + stats["added"]
    exact = extend_bpe(base_dir, domain, tmp_path / "exact", add_pieces=150, check_texts=english)
    assert exact["added"] == 150 and exact["skipped_surplus"] > 0 and exact["check_texts_changed"] == 0
    assert len(load_tokenizer(tmp_path / "exact")) == exact["base_pieces"] + 150
    with pytest.raises(CptlabError, match=r"tokenizer\.add_pieces=20000 is more than the new-domain corpus yields"):
        extend_bpe(base_dir, domain, tmp_path / "huge", add_pieces=20000)


def test_errors_name_the_problem(bases, tmp_path, make_docs, exported):
    base_dir = bases["gpt2"]
    with pytest.raises(CptlabError, match=r"tokenizer\.vocab_size=256 is too small"):
        extend_bpe(base_dir, chinese_docs(), tmp_path / "a", vocab_size=256)
    with pytest.raises(CptlabError, match=r"adds nothing to .* under tokenizer\.admit=auto: fewer than 1% of the characters of "
                                          r"its first 100 documents"):
        extend_bpe(base_dir, make_docs(100, seed=1), tmp_path / "b", vocab_size=800)
    _, spm_dir = exported("bpe")
    with pytest.raises(CptlabError, match="is not a byte-level BPE tokenizer"):
        extend_bpe(spm_dir, chinese_docs(), tmp_path / "c", vocab_size=800)


def test_prepare_extend_handles_byte_level_bases(bases, tmp_path, make_docs):
    kwargs = dict(cache_root=tmp_path / "cache", source=str(bases["llama3"]), texts=lambda: chinese_docs(),
                  vocab_size=1000, base_texts=lambda: make_docs(50))  # fmt: skip
    out = prepare_tokenizer("extend", tmp_path / "run", **kwargs)
    stats = extension_stats(out)
    assert stats["added"] > 100
    tok = load_tokenizer(out)
    assert len(tok) == stats["final_pieces"] and tok.eos_token_id == 0
    assert (out / "special_tokens_map.json").exists() or (out / "tokenizer_config.json").exists()
    with pytest.raises(CptlabError, match=r"tokenizer\.model_type='unigram'"):
        prepare_tokenizer("extend", tmp_path / "run2", **{**kwargs, "model_type": "unigram"})


def test_a_token_whose_domain_part_is_skipped_is_built_through_an_admissible_bridge():
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {token: i for i, token in enumerate(sorted(alphabet))}
    vocab["Ġthe"] = len(vocab)
    spec = {"model": {"type": "BPE", "vocab": vocab, "merges": []}, "added_tokens": []}
    # The domain merged the last two bytes of "中" first: "¸Ń" also ends "ḭ" (Latin), so it may not be added.
    domain = {"vocab": {**vocab, "¸Ń": 300, "ä¸Ń": 301}, "merges": [["¸", "Ń"], ["ä", "¸Ń"]]}
    admission = make_admission("script", set(), decoded_tokens(vocab))
    new_spec, stats = merge_bpe(spec, domain, admission=admission)
    assert new_spec["model"]["merges"] == [["ä", "¸"], ["ä¸", "Ń"]]  # "ä¸" only starts CJK characters
    assert (stats["added"], stats["bridges_added"], stats["skipped_base_script"]) == (2, 1, 1)
    assert new_spec["model"]["vocab"]["ä¸Ń"] == len(vocab) + 1
    _, limited = merge_bpe(spec, domain, admission=admission, limit=1)  # the bridge counts against the limit
    assert (limited["added"], limited["skipped_surplus"]) == (0, 1)

"""Byte-level BPE extension: every base id (specials included) stays, base-language text segments as before,
Chinese gets shorter, decoding stays lossless, and the directory loads through AutoTokenizer."""

from __future__ import annotations

import json
import random

import pytest
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from cptlab.errors import CptlabError
from cptlab.tokenizer.bpe_extend import CoveredText, check_same_segmentation, extend_bpe, merge_bpe, token_bytes
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


def test_check_fires_when_new_merges_touch_english(bases, make_docs, tmp_path):
    # Appending the merges of a domain tokenizer unfiltered (English included) re-segments English.
    base_dir = bases["gpt2"]
    spec = json.loads((base_dir / "tokenizer.json").read_text())
    domain = Tokenizer(models.BPE())
    domain.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    domain.train_from_iterator(make_docs(300) + chinese_docs(), trainers.BpeTrainer(
        vocab_size=1500, show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))  # fmt: skip

    class Nothing:  # covers no text at all, so every domain token passes
        def possible(self, data):
            return False

    naive, _ = merge_bpe(spec, json.loads(domain.to_str())["model"], Nothing())
    base = Tokenizer.from_file(str(base_dir / "tokenizer.json"))
    with pytest.raises(CptlabError, match="segments base-language text differently"):
        check_same_segmentation(base, Tokenizer.from_str(json.dumps(naive)), make_docs(100, seed=5),
                                CoveredText(spec["model"]["vocab"]).chars, tmp_path)  # fmt: skip


def test_errors_name_the_problem(bases, tmp_path, make_docs, exported):
    base_dir = bases["gpt2"]
    with pytest.raises(CptlabError, match=r"tokenizer\.vocab_size=256 is too small"):
        extend_bpe(base_dir, chinese_docs(), tmp_path / "a", vocab_size=256)
    with pytest.raises(CptlabError, match=r"tokenizer\.vocab_size=800 adds nothing"):
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

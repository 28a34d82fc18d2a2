"""Tokenizer reports: tokens per character, byte-fallback share (character fragments), encode speed."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from cptlab.tokenizer.hf import load_tokenizer
from cptlab.tokenizer.report import extension_lines, fragment_ids, tokenizer_report, tokens_per_char
from cptlab.tokenizer.spm import load_spm

CHINESE = ["中文测试，日本語のテキスト。", "我们今天去北京，明天回上海。", "的的的一是在不了有和人这中大"]


def test_tokens_per_char_agrees_for_sentencepiece_and_hf(exported, docs):
    model, hf_dir = exported("bpe")
    texts = docs[:50] + CHINESE
    expected = sum(map(len, load_spm(model).encode(texts))) / sum(map(len, texts))
    assert tokens_per_char(load_spm(model), texts) == pytest.approx(expected)
    assert tokens_per_char(load_tokenizer(hf_dir), texts) == pytest.approx(expected)
    assert math.isnan(tokens_per_char(load_tokenizer(hf_dir), ["", ""]))


def test_sentencepiece_fragments_are_the_byte_pieces(exported, docs):
    _, hf_dir = exported("bpe")
    tok = load_tokenizer(hf_dir)
    flags = fragment_ids(tok)
    assert np.flatnonzero(flags).tolist() == tok.convert_tokens_to_ids([f"<0x{b:02X}>" for b in range(256)])
    english, chinese = tokenizer_report(hf_dir, docs[:50]), tokenizer_report(hf_dir, CHINESE)
    assert chinese["byte_fallback_share"] > 0.9 > 0.05 > english["byte_fallback_share"]
    assert chinese["n_chars"] == sum(map(len, CHINESE))
    assert chinese["tokens_per_char"] == pytest.approx(chinese["n_tokens"] / chinese["n_chars"])
    assert english["encode_tokens_per_sec"] > 0


def test_byte_level_fragments_are_tokens_that_split_a_character(tmp_path, docs):
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    rnd = random.Random(0)
    corpus = docs + ["".join(rnd.choices(CHINESE[2], k=30)) for _ in range(100)]
    tokenizer.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=500, special_tokens=["<|endoftext|>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))  # fmt: skip
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>").save_pretrained(str(tmp_path))
    tok = load_tokenizer(tmp_path)
    flags = fragment_ids(tok)
    vocab = tok.get_vocab()
    assert not flags[vocab["<|endoftext|>"]] and not flags[vocab["Ġthe"]] and not flags[vocab["a"]]
    assert flags[vocab["ä"]] and flags[vocab["Ń"]]  # a lead byte and a continuation byte
    assert not flags[vocab["çļĦ"]]  # "的", learned whole
    assert tokenizer_report(tmp_path, ["的"])["byte_fallback_share"] == 0.0
    korean = tokenizer_report(tmp_path, ["테스트"])  # lead byte 0xED never seen: one token per byte
    assert korean["byte_fallback_share"] == 1.0 and korean["n_tokens"] == 9


def test_extension_lines_name_each_skip_reason_and_read_old_stats():
    stats = dict(base_pieces=400, domain_pieces=700, added=300, final_pieces=700, skipped_special=259,
                 skipped_existing=41, skipped_base_script=90, skipped_covered=0, skipped_unreachable=10,
                 skipped_in_sample=0, skipped_surplus=0, admit="auto", new_scripts=["CJK"], add_pieces=None,
                 check_texts=50, check_texts_changed=1, check_texts_changed_share=0.02)  # fmt: skip
    assert extension_lines(stats) == [
        "300 pieces added to 400 (700 in all), admit=auto, new scripts: CJK",
        "skipped of the 700 domain pieces: 41 already in the base; 90 without a character of a new script; 259 "
        "special or byte pieces; 10 unreachable (a part was skipped, or the base's normaliser rewrites it)",
        "base-language texts segmented differently: 1 of 50 (2.00%)",
    ]
    # A tokenizer extended before admission rules existed (strict, no share recorded).
    old = dict(base_pieces=400, domain_pieces=700, added=5, final_pieces=405, skipped_covered=3, check_texts=4,
               check_texts_changed=1)  # fmt: skip
    assert extension_lines(old)[0].endswith("admit=strict, new scripts: -")
    assert extension_lines(old)[2] == "base-language texts segmented differently: 1 of 4 (25.00%)"

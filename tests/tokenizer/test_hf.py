"""The HF export encodes and decodes exactly like SentencePiece, and reloads through AutoTokenizer unchanged."""

from __future__ import annotations

import json
import math
import shutil

import pytest
from transformers import AutoTokenizer, LlamaConfig

from cptlab.errors import CptlabError
from cptlab.tokenizer.hf import TRICKY_TEXTS, export_hf_tokenizer, load_tokenizer, verify_export
from cptlab.tokenizer.spm import load_spm

VARIANTS = ["bpe", "unigram", "bpe-dummy-prefix", "unigram-dummy-prefix"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_ids_and_decoding_match_sentencepiece(exported, tricky_texts, variant):
    model, hf_dir = exported(variant)
    sp, tok = load_spm(model), load_tokenizer(hf_dir)
    for text in tricky_texts + TRICKY_TEXTS:
        ids = tok.encode(text, add_special_tokens=False)
        assert ids == sp.encode(text), text
        assert tok.decode(ids) == sp.decode(ids)
        if "▁" not in text:  # SentencePiece itself reads a literal "▁" as a space
            assert tok.decode(ids) == text


@pytest.mark.parametrize("variant", ["bpe", "bpe-dummy-prefix"])
def test_bpe_matches_sentencepiece_on_random_text(exported, make_fuzz, variant):
    model, hf_dir = exported(variant)
    sp, tok = load_spm(model), load_tokenizer(hf_dir)
    texts = make_fuzz(1000, seed=1) + ['x = "</s>" + "<s>" + "<unk>" + "<0x41>"']
    assert tok(texts, add_special_tokens=False)["input_ids"] == sp.encode(texts)


@pytest.mark.parametrize("variant", ["unigram", "unigram-dummy-prefix"])
def test_unigram_matches_sentencepiece_up_to_score_ties(exported, make_fuzz, variant):
    # float32 (SentencePiece) and float64 (tokenizers) Viterbi can break exact ties differently.
    model, hf_dir = exported(variant)
    sp, tok = load_spm(model), load_tokenizer(hf_dir)
    texts = make_fuzz(1000, seed=2)
    for text, got, expected in zip(texts, tok(texts, add_special_tokens=False)["input_ids"], sp.encode(texts)):
        if got != expected:
            assert sp.decode(got) == sp.decode(expected) == text
            assert math.isclose(sum(map(sp.get_score, got)), sum(map(sp.get_score, expected)), abs_tol=1e-4)


def test_reloads_as_fast_tokenizer_with_llama_specials(exported):
    _, hf_dir = exported("bpe")
    tok = AutoTokenizer.from_pretrained(hf_dir)
    assert tok.is_fast and type(tok).__name__ == "TokenizersBackend"
    assert (tok.unk_token, tok.bos_token, tok.eos_token) == ("<unk>", "<s>", "</s>")
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert tok.pad_token is None
    assert len(tok) == 400
    assert sorted(p.name for p in hf_dir.iterdir()) == ["tokenizer.json", "tokenizer.model", "tokenizer_config.json"]
    config = json.loads((hf_dir / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert config["split_special_tokens"] is True and config["clean_up_tokenization_spaces"] is False


def test_default_call_adds_no_special_tokens(exported):
    model, hf_dir = exported("bpe")
    sp, tok = load_spm(model), load_tokenizer(hf_dir)
    text = "Hello there"
    assert tok(text)["input_ids"] == tok.encode(text) == sp.encode(text)


@pytest.mark.parametrize("variant", ["bpe", "unigram"])
def test_literal_special_tokens_in_text_stay_text(exported, variant):
    # As in SentencePiece: a "</s>" inside a document is not a document boundary.
    model, hf_dir = exported(variant)
    sp, tok = load_spm(model), load_tokenizer(hf_dir)
    text = 's = "</s>" + \'<0x41>\' + "<s>" + "<unk>"'
    ids = tok.encode(text)
    assert ids == sp.encode(text)
    assert not {0, 1, 2} & set(ids)
    assert tok.decode(ids) == text


def test_model_config_next_to_tokenizer_does_not_change_the_class(exported, tmp_path):
    # A checkpoint directory also holds config.json with model_type=llama; transformers' own
    # LlamaTokenizer would re-add a dummy prefix and drop leading spaces.
    model, hf_dir = exported("bpe")
    run_dir = tmp_path / "checkpoint"
    shutil.copytree(hf_dir, run_dir)
    config = LlamaConfig(
        vocab_size=400, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
    )
    config.save_pretrained(run_dir)
    tok = load_tokenizer(run_dir)
    assert type(tok).__name__ == "TokenizersBackend"
    text = "  indented\n    code "
    assert tok.encode(text) == load_spm(model).encode(text)
    assert tok.decode(tok.encode(text)) == text


def test_user_defined_pieces_match_sentencepiece(tmp_path, docs, train_raw):
    model = train_raw(tmp_path / "spm", docs, user_defined_symbols=["<|code|>", "foo"], control_symbols=["<ctl>"])
    export_hf_tokenizer(model, tmp_path / "hf")
    sp, tok = load_spm(model), load_tokenizer(tmp_path / "hf")
    for text in ["<|code|>def foo(x):", "xfoox <ctl> foo", " foo <|code|>"]:
        assert tok.encode(text) == sp.encode(text), text


def test_verify_export_names_the_mismatching_text(exported):
    bpe_model, _ = exported("bpe")
    _, unigram_dir = exported("unigram")
    with pytest.raises(CptlabError, match="Hello world"):
        verify_export(bpe_model, unigram_dir, ["", "Hello world"])


def test_load_tokenizer_errors_name_the_path(tmp_path):
    with pytest.raises(CptlabError, match=str(tmp_path)):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(CptlabError, match=str(tmp_path)):
        load_tokenizer(tmp_path)


def test_export_rejects_a_file_that_is_not_sentencepiece(tmp_path):
    bogus = tmp_path / "tokenizer.model"
    bogus.write_text("definitely not a protobuf")
    with pytest.raises(CptlabError, match="not a SentencePiece model"):
        export_hf_tokenizer(bogus, tmp_path / "hf")

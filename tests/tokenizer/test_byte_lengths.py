"""Token byte lengths add up to the text's UTF-8 length, for SentencePiece exports and byte-level BPE."""

from __future__ import annotations

import numpy as np
import pytest
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from cptlab.tokenizer.byte_lengths import token_byte_lengths
from cptlab.tokenizer.hf import load_tokenizer


@pytest.mark.parametrize("variant", ["bpe", "unigram"])
def test_spm_lengths_sum_to_text_bytes(exported, tricky_texts, make_fuzz, variant):
    tok = load_tokenizer(exported(variant)[1])
    lengths = token_byte_lengths(tok)
    assert lengths.dtype == np.int64 and lengths.shape == (len(tok),)
    for text in tricky_texts + make_fuzz(300, seed=3):
        ids = tok.encode(text, add_special_tokens=False)
        assert lengths[ids].sum() == len(text.encode("utf-8")), text


def test_spm_special_and_byte_pieces(exported):
    tok = load_tokenizer(exported("bpe")[1])
    lengths = token_byte_lengths(tok)
    assert lengths[tok.eos_token_id] == 1  # the document boundary
    assert lengths[tok.bos_token_id] == 0 and lengths[tok.unk_token_id] == 0
    assert lengths[tok.convert_tokens_to_ids("<0xF0>")] == 1
    assert lengths[tok.convert_tokens_to_ids("▁▁▁▁")] == 4


def _byte_level_tokenizer(docs: list[str]) -> PreTrainedTokenizerFast:
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=500,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(docs, trainer=trainer)
    backend.add_tokens([AddedToken(" <tool>", normalized=False)])
    backend.add_special_tokens([AddedToken("<|pad|>", special=True)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>", pad_token="<|pad|>")


def test_byte_level_bpe_lengths_sum_to_text_bytes(docs, tricky_texts, make_fuzz):
    tok = _byte_level_tokenizer(docs)
    lengths = token_byte_lengths(tok)
    assert lengths.shape == (len(tok),)
    assert lengths[tok.eos_token_id] == 1 and lengths[tok.pad_token_id] == 0
    assert lengths[tok.convert_tokens_to_ids(" <tool>")] == len(" <tool>")
    for text in tricky_texts + make_fuzz(300, seed=4) + ["call <tool> now", "ünïcödé 🙂 中文"]:
        ids = tok.encode(text, add_special_tokens=False)
        assert tok.decode(ids) == text
        assert lengths[ids].sum() == len(text.encode("utf-8")), text


def test_eos_counts_as_the_document_boundary(exported):
    tok = load_tokenizer(exported("bpe")[1])
    lengths = token_byte_lengths(tok)
    docs = ["first document", "second one"]
    ids = [i for doc in docs for i in tok.encode(doc) + [tok.eos_token_id]]
    assert lengths[ids].sum() == len("\n".join(docs).encode()) + 1

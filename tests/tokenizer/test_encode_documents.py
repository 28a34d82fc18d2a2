"""The token caches encode with the Rust tokenizer directly (cptlab.data.tokens.encode_documents): the ids
must be exactly what the Hugging Face tokenizer gives, for every exported SentencePiece variant, on text
with whitespace runs, newlines, byte-fallback characters and emoji."""

import numpy as np
import pytest

from cptlab.data.tokens import encode_documents
from cptlab.tokenizer.hf import load_tokenizer


@pytest.mark.parametrize("variant", ["bpe", "unigram", "bpe-dummy-prefix", "unigram-dummy-prefix"])
def test_fast_path_ids_equal_the_hf_tokenizer(exported, tricky_texts, docs, variant):
    tok = load_tokenizer(exported(variant)[1])
    texts = [*tricky_texts, *docs[:50]]
    expected = []
    for ids in tok(texts, add_special_tokens=False)["input_ids"]:
        expected += [*ids, tok.eos_token_id]
    got = encode_documents(tok, texts, tok.eos_token_id, "uint16")
    assert got.dtype == np.uint16 and got.tolist() == expected

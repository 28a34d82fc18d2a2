"""SentencePiece training: lossless settings, determinism, and one-line errors for bad inputs."""

from __future__ import annotations

import pytest
from sentencepiece import sentencepiece_model_pb2 as spm_pb2

from cptlab.errors import CptlabError
from cptlab.tokenizer.spm import load_spm, train_spm


def _proto(path) -> spm_pb2.ModelProto:
    proto = spm_pb2.ModelProto()
    proto.ParseFromString(path.read_bytes())
    return proto


@pytest.mark.parametrize("model_type", ["bpe", "unigram"])
def test_training_is_deterministic(tmp_path, docs, model_type):
    a = train_spm(docs, tmp_path / "a", vocab_size=400, model_type=model_type)
    b = train_spm(iter(docs), tmp_path / "b", vocab_size=400, model_type=model_type)
    assert a == tmp_path / "a" / "tokenizer.model"
    assert a.read_bytes() == b.read_bytes()


def test_model_uses_lossless_llama_style_settings(exported):
    model, _ = exported("bpe")
    proto = _proto(model)
    norm, spec = proto.normalizer_spec, proto.trainer_spec
    assert (norm.name, norm.add_dummy_prefix, norm.remove_extra_whitespaces) == ("identity", False, False)
    assert spec.byte_fallback and spec.split_digits and spec.allow_whitespace_only_pieces
    assert [p.piece for p in proto.pieces[:3]] == ["<unk>", "<s>", "</s>"]
    assert (spec.unk_id, spec.bos_id, spec.eos_id, spec.pad_id) == (0, 1, 2, -1)
    assert len(proto.pieces) == 400
    # Documents are fed as lines, so no piece spans a newline.
    assert not any("\n" in p.piece for p in proto.pieces)


@pytest.mark.parametrize("variant", ["bpe", "unigram"])
def test_round_trip_is_exact(exported, tricky_texts, make_fuzz, variant):
    sp = load_spm(exported(variant)[0])
    for text in tricky_texts + make_fuzz(300):
        assert sp.decode(sp.encode(text)) == text


def test_small_corpus_gives_smaller_vocab_instead_of_failing(tmp_path):
    model = train_spm(["a tiny corpus", "with two lines"], tmp_path, vocab_size=5000)
    assert 259 < load_spm(model).get_piece_size() < 5000


@pytest.mark.parametrize("vocab_size", [100, 262])
def test_vocab_too_small_names_the_key(tmp_path, docs, vocab_size):
    # 100 is below the byte pieces; 262 holds them but not this corpus's characters.
    with pytest.raises(CptlabError, match=r"tokenizer\.vocab_size=" + str(vocab_size)):
        train_spm(docs, tmp_path, vocab_size=vocab_size)


@pytest.mark.parametrize("texts", [[], ["", "\n\n"]])
def test_empty_corpus_is_an_error(tmp_path, texts):
    with pytest.raises(CptlabError, match="empty"):
        train_spm(texts, tmp_path, vocab_size=400)


def test_a_model_type_sentencepiece_does_not_know_is_refused(tmp_path, docs):
    """tokenizer.model_type's message is the rule's (check_value, tests/test_validation_rules.py, with a null
    refused where training needs a type; a run: tests/reliability/test_validation.py); SentencePiece itself
    refuses a name it does not know, before writing anything."""
    for model_type in ("bogus", None):
        with pytest.raises(ValueError, match=str(model_type)):  # SentencePiece's message names the value
            train_spm(docs, tmp_path, vocab_size=400, model_type=model_type)
    assert not (tmp_path / "tokenizer.model").exists()


def test_training_is_quiet(tmp_path, docs, capfd, monkeypatch):
    monkeypatch.delenv("CPTLAB_VERBOSE", raising=False)
    train_spm(docs, tmp_path, vocab_size=400)
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_load_spm_missing_file(tmp_path):
    with pytest.raises(CptlabError, match="nope.model"):
        load_spm(tmp_path / "nope.model")

"""prepare_tokenizer: trained tokenizers are cached by content, base tokenizers are copied or exported."""

from __future__ import annotations

import shutil

import pytest

import cptlab.tokenizer.prepare as prepare
from cptlab.errors import CptlabError
from cptlab.tokenizer.hf import load_tokenizer
from cptlab.tokenizer.prepare import prepare_tokenizer
from cptlab.tokenizer.spm import load_spm
from cptlab.utils.hashing import hash_dir


@pytest.fixture
def train_calls(spy):
    """Counts the SentencePiece trainings prepare_tokenizer runs."""
    return spy(prepare, "train_spm")


def test_train_is_cached_by_content(tmp_path, docs, train_calls):
    cache = tmp_path / "cache"
    first = prepare_tokenizer("train", tmp_path / "run1", cache_root=cache, texts=lambda: iter(docs), vocab_size=400)
    second = prepare_tokenizer("train", tmp_path / "run2", cache_root=cache, texts=lambda: list(docs), vocab_size=400)
    assert (first, second) == (tmp_path / "run1", tmp_path / "run2")
    assert len(train_calls) == 1
    assert hash_dir(first) == hash_dir(second)
    [cached] = [p for p in (cache / "tokenizers").iterdir() if p.is_dir()]
    assert cached.name.startswith("spm-") and (cached / "tokenizer.model").is_file()
    tok = load_tokenizer(first)
    assert tok.eos_token_id == 2 and len(tok) == 400
    assert tok.encode("Hello world") == load_spm(first / "tokenizer.model").encode("Hello world")


def test_different_texts_or_options_train_again(tmp_path, docs, make_docs, train_calls):
    cache = tmp_path / "cache"
    prepare_tokenizer("train", tmp_path / "a", cache_root=cache, texts=lambda: docs, vocab_size=400)
    prepare_tokenizer("train", tmp_path / "b", cache_root=cache, texts=lambda: make_docs(seed=1), vocab_size=400)
    prepare_tokenizer("train", tmp_path / "c", cache_root=cache, texts=lambda: docs, vocab_size=450)
    assert len(train_calls) == 3
    assert len([p for p in (cache / "tokenizers").iterdir() if p.is_dir()]) == 3
    assert hash_dir(tmp_path / "a") != hash_dir(tmp_path / "b")


def test_out_dir_is_left_alone_when_identical_and_replaced_otherwise(tmp_path, docs, make_docs):
    cache, out = tmp_path / "cache", tmp_path / "run" / "tokenizer"
    prepare_tokenizer("train", out, cache_root=cache, texts=lambda: docs, vocab_size=400)
    inode = out.stat().st_ino
    prepare_tokenizer("train", out, cache_root=cache, texts=lambda: docs, vocab_size=400)
    assert out.stat().st_ino == inode
    prepare_tokenizer("train", out, cache_root=cache, texts=lambda: make_docs(seed=2), vocab_size=400)
    assert out.stat().st_ino != inode
    # no temporary leftovers (the lock that serialises ranks stays, as cache locks do)
    assert sorted(p.name for p in out.parent.iterdir()) == [".tokenizer.lock", "tokenizer"]


def test_base_from_hf_directory_is_copied(tmp_path, exported):
    model, hf_dir = exported("bpe")
    out = prepare_tokenizer("base", tmp_path / "out", cache_root=tmp_path / "cache", source=str(hf_dir))
    assert hash_dir(out) == hash_dir(hf_dir)
    assert load_tokenizer(out).encode("  x\n") == load_spm(model).encode("  x\n")


@pytest.mark.parametrize("variant", ["bpe", "unigram-dummy-prefix"])
def test_base_from_sentencepiece_model_is_exported(tmp_path, exported, variant):
    model, _ = exported(variant)
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copyfile(model, bare / "tokenizer.model")
    text = " Hello  world\n\tdone "
    for source in (model, bare):
        out = tmp_path / f"out-{source.name}"
        prepare_tokenizer("base", out, cache_root=tmp_path / "cache", source=str(source))
        assert (out / "tokenizer.json").is_file() and (out / "tokenizer.model").read_bytes() == model.read_bytes()
        assert load_tokenizer(out).encode(text) == load_spm(model).encode(text)
        inode = out.stat().st_ino
        prepare_tokenizer("base", out, cache_root=tmp_path / "cache", source=str(source))
        assert out.stat().st_ino == inode  # the export is deterministic, so the directory is kept


def test_base_errors_name_the_source(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(CptlabError, match=f"tokenizer.path={missing} does not exist"):
        prepare_tokenizer("base", tmp_path / "out", cache_root=tmp_path, source=str(missing))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CptlabError, match=f"tokenizer.path={empty} holds no tokenizer"):
        prepare_tokenizer("base", tmp_path / "out", cache_root=tmp_path, source=str(empty))
    assert not (tmp_path / "out").exists()


def test_an_unknown_kind_is_refused(tmp_path):
    """tokenizer.kind's message is the rule's (check_value, tests/test_validation_rules.py); prepare_tokenizer
    builds three kinds and refuses any other name, writing nothing."""
    with pytest.raises(ValueError, match=r"unknown tokenizer kind 'pretrained' \(tokenizer\.kind\)"):
        prepare_tokenizer("pretrained", tmp_path / "out", cache_root=tmp_path)
    assert not (tmp_path / "out").exists()


def test_train_without_texts_is_an_error(tmp_path):
    with pytest.raises(CptlabError, match="tokenizer.kind=train"):
        prepare_tokenizer("train", tmp_path / "out", cache_root=tmp_path)


def test_texts_key_lets_a_warm_cache_skip_reading_the_texts(tmp_path, docs, make_docs, train_calls):
    cache = tmp_path / "cache"

    def unreadable():
        raise AssertionError("a warm cache keyed by texts_key must not read the texts")

    first = prepare_tokenizer("train", tmp_path / "a", cache_root=cache, texts=lambda: docs, vocab_size=400,
                              texts_key="sources-v1")
    second = prepare_tokenizer("train", tmp_path / "b", cache_root=cache, texts=unreadable, vocab_size=400,
                               texts_key="sources-v1")
    assert len(train_calls) == 1 and hash_dir(first) == hash_dir(second)
    # Another key (the sources changed) trains again, on the texts it is given.
    prepare_tokenizer("train", tmp_path / "c", cache_root=cache, texts=lambda: make_docs(seed=1), vocab_size=400,
                      texts_key="sources-v2")
    assert len(train_calls) == 2 and hash_dir(tmp_path / "c") != hash_dir(first)


def _publish_into(args):
    cache, out, docs = args
    return str(prepare_tokenizer("train", out, cache_root=cache, texts=lambda: docs, vocab_size=400))


def test_ranks_publishing_the_same_run_tokenizer_at_once_all_succeed(tmp_path, docs):
    # Every rank of a multi-process run puts run_dir/tokenizer in place at the same moment.
    import multiprocessing

    cache, out = tmp_path / "cache", tmp_path / "run" / "tokenizer"
    prepare_tokenizer("train", tmp_path / "warm", cache_root=cache, texts=lambda: docs, vocab_size=400)
    with multiprocessing.get_context("fork").Pool(4) as pool:
        results = pool.map(_publish_into, [(cache, out, docs)] * 8)
    assert results == [str(out)] * 8
    assert hash_dir(out) == hash_dir(tmp_path / "warm")
    assert not [p.name for p in out.parent.iterdir() if p.name.endswith((".tmp", ".old"))]

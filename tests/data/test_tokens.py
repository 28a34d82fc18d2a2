"""Token caches: exact content, dtype, keying, reuse, damage detection, multi-process equality."""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from cptlab.data import tokens
from cptlab.data.tokens import DomainSpec, load_domain_documents, prepare_domain, token_dtype
from cptlab.errors import CptlabError
from cptlab.utils.hashing import hash_file


@pytest.fixture
def corpus(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    words = "the cat sat on a mat 数据 模型 def return ( ) : = 42".split()
    docs = [" ".join(rng.choice(words, size=int(rng.integers(1, 30)))) + f" #{i}" for i in range(300)]
    docs += docs[:20]  # duplicates must stay on one side of the split
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs), encoding="utf-8")
    return path


def spec_for(corpus: Path, **kw) -> DomainSpec:
    return DomainSpec(name="toy", role="new", sources=(str(corpus),), **{"heldout": 0.1, **kw})


def expected_array(tokenizer_dir: Path, docs: list[str]) -> np.ndarray:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    ids = []
    for d in docs:
        ids += tok.encode(d, add_special_tokens=False) + [tok.eos_token_id]
    return np.array(ids)


def test_token_dtype_boundary():
    assert token_dtype(400) == "uint16"
    assert token_dtype(65535) == "uint16"
    assert token_dtype(65536) == "uint32"
    assert token_dtype(151_936) == "uint32"


def test_arrays_equal_a_direct_encode_with_eos_after_every_document(corpus, tokenizer_dir, tmp_path):
    spec = spec_for(corpus)
    dt = prepare_domain(spec, tokenizer_dir, tmp_path / "cache", seed=7)
    train_docs, val_docs, stats = load_domain_documents(spec, seed=7)
    assert dt.dir.parent == tmp_path / "cache" / "tokens" and dt.dir.name.startswith("toy-")
    assert dt.dtype == "uint16" and dt.train_tokens().dtype == np.uint16
    np.testing.assert_array_equal(dt.train_tokens(), expected_array(tokenizer_dir, train_docs))
    np.testing.assert_array_equal(dt.val_tokens(), expected_array(tokenizer_dir, val_docs))
    assert (dt.n_train_docs, dt.n_val_docs) == (len(train_docs), len(val_docs))
    assert int((dt.train_tokens() == dt.eos_id).sum()) == len(train_docs)
    assert dt.val_bytes == sum(len(d.encode()) for d in val_docs)
    assert dt.val_bytes > sum(map(len, val_docs))  # the corpus has multi-byte Chinese characters
    assert dt.stats["docs_read"] == 320 and stats["bad_text_replaced"] == 0
    with pytest.raises(ValueError):
        dt.train_tokens()[0] = 1  # read-only
    meta = json.loads((dt.dir / "meta.json").read_text())
    assert meta["train_hash"] == hash_file(dt.dir / "train.bin") and meta["vocab_size"] == 400
    assert meta["key_inputs"]["seed"] == 7


def test_max_docs_keeps_the_first_documents_and_stops_reading_there(corpus):
    train, val, stats = load_domain_documents(spec_for(corpus, max_docs=50))
    assert len(train) + len(val) == 50 and stats["docs_read"] == 50
    first = [json.loads(line)["text"] for line in corpus.read_text(encoding="utf-8").splitlines()[:50]]
    assert sorted(train + val) == sorted(first)


def test_reuse_does_not_read_or_encode_again(corpus, tokenizer_dir, tmp_path, monkeypatch):
    first = prepare_domain(spec_for(corpus), tokenizer_dir, tmp_path)
    mtime = (first.dir / "train.bin").stat().st_mtime_ns

    def forbidden(*args, **kwargs):
        raise AssertionError("a valid cache was rebuilt")

    monkeypatch.setattr(tokens, "load_domain_documents", forbidden)
    monkeypatch.setattr(tokens, "encode_documents", forbidden)
    again = prepare_domain(spec_for(corpus, weight=3.0), tokenizer_dir, tmp_path)  # the weight is not in the key
    assert again.dir == first.dir and again.weight == 3.0
    assert (again.dir / "train.bin").stat().st_mtime_ns == mtime


def test_concurrent_callers_build_once(corpus, tokenizer_dir, tmp_path, monkeypatch):
    builds = []
    real_build = tokens._build

    def counting_build(*args, **kwargs):
        builds.append(1)
        return real_build(*args, **kwargs)

    monkeypatch.setattr(tokens, "_build", counting_build)
    with ThreadPoolExecutor(3) as pool:  # like sweep jobs sharing one cache root
        results = list(pool.map(lambda _: prepare_domain(spec_for(corpus), tokenizer_dir, tmp_path), range(3)))
    assert len(builds) == 1
    assert len({r.dir for r in results}) == 1 and len({r.n_train_tokens for r in results}) == 1


def test_damaged_cache_is_detected_and_rebuilt(corpus, tokenizer_dir, tmp_path):
    good = prepare_domain(spec_for(corpus), tokenizer_dir, tmp_path)
    reference = np.array(good.train_tokens())
    with open(good.dir / "train.bin", "r+b") as f:
        f.truncate(os.path.getsize(good.dir / "train.bin") - 6)
    rebuilt = prepare_domain(spec_for(corpus), tokenizer_dir, tmp_path)
    assert rebuilt.dir == good.dir
    np.testing.assert_array_equal(rebuilt.train_tokens(), reference)

    (good.dir / "meta.json").write_text("{not json")
    again = prepare_domain(spec_for(corpus), tokenizer_dir, tmp_path)
    np.testing.assert_array_equal(again.train_tokens(), reference)
    assert json.loads((again.dir / "meta.json").read_text())["n_train_tokens"] == reference.size


def test_cache_key_follows_tokenizer_sources_and_split(corpus, tokenizer_dir, other_tokenizer_dir, tmp_path):
    base = prepare_domain(spec_for(corpus), tokenizer_dir, tmp_path).dir
    assert prepare_domain(spec_for(corpus), other_tokenizer_dir, tmp_path).dir != base
    assert prepare_domain(spec_for(corpus), tokenizer_dir, tmp_path, seed=1).dir != base
    assert prepare_domain(spec_for(corpus, heldout=5), tokenizer_dir, tmp_path).dir != base
    with open(corpus, "a", encoding="utf-8") as f:
        f.write('{"text": "one more document"}\n')
    changed = prepare_domain(spec_for(corpus), tokenizer_dir, tmp_path)
    assert changed.dir != base and changed.n_train_docs + changed.n_val_docs == 321


def test_num_proc_2_gives_identical_arrays(corpus, tokenizer_dir, tmp_path):
    one = prepare_domain(spec_for(corpus), tokenizer_dir, tmp_path / "a", num_proc=1)
    two = prepare_domain(spec_for(corpus), tokenizer_dir, tmp_path / "b", num_proc=2)
    np.testing.assert_array_equal(one.train_tokens(), two.train_tokens())
    np.testing.assert_array_equal(one.val_tokens(), two.val_tokens())
    assert one.dir.name == two.dir.name  # num_proc is not part of the key


def test_demo_source_and_quiet_progress_off_a_terminal(tokenizer_dir, tmp_path, capfd):
    spec = DomainSpec(name="zh", role="replay", sources=("demo:zh",), heldout=10, max_docs=200)
    dt = prepare_domain(spec, tokenizer_dir, tmp_path, progress=True)
    assert (dt.n_train_docs, dt.n_val_docs) == (190, 10)
    assert dt.n_train_tokens > 190 * 5
    assert capfd.readouterr().err == ""


def test_errors(corpus, tokenizer_dir, no_eos_tokenizer_dir, tmp_path):
    with pytest.raises(CptlabError, match="tokenizer has no eos_token"):
        prepare_domain(spec_for(corpus), no_eos_tokenizer_dir, tmp_path)
    assert not any((tmp_path / "tokens").glob("toy-*/.complete"))  # nothing half-built left looking complete
    with pytest.raises(CptlabError, match="tokenizer directory not found"):
        prepare_domain(spec_for(corpus), tmp_path / "missing_tok", tmp_path)
    with pytest.raises(CptlabError, match=f"data source not found: {tmp_path / 'nope.txt'}"):
        prepare_domain(DomainSpec("x", "new", (str(corpus), str(tmp_path / "nope.txt"))), tokenizer_dir, tmp_path)
    # role / sources / max_docs / weight: refused by cptlab.run.validate (tests/reliability/test_validation.py)
    with pytest.raises(CptlabError, match=r"data.domains.x.heldout: cannot hold out 400 documents from 320"):
        load_domain_documents(DomainSpec("x", "new", (str(corpus),), heldout=400))

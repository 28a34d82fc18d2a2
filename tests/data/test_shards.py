"""Shards: one token-cache entry per source file, so a domain that gains a file encodes only that file; the
domain's train stream is its shards' arrays in order (hard links, not copies), read across shard boundaries by
the mixture sampler exactly as one array would be."""

from __future__ import annotations

import gzip
import os

import numpy as np
import pytest

from cptlab.data import tokens
from cptlab.data.mixture import MixtureSampler
from cptlab.data.tokens import DomainSpec, load_domain_documents, prepare_domain

WORDS = "the a cat dog sat on mat runs fast model data token 猫 狗 数据".split()


def sentences(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(3, 12)))) + f" {i}." for i in range(n)]


def write_shards(directory, n_files: int, docs_per_file: int = 60, start: int = 0) -> list[list[str]]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for f in range(start, start + n_files):
        docs = [f"file {f} " + s for s in sentences(docs_per_file, seed=f)]
        with gzip.open(directory / f"part-{f:03d}.txt.gz", "wt", encoding="utf-8") as out:
            out.write("\n".join(docs) + "\n")
        written.append(docs)
    return written


def spec_for(source, **kw) -> DomainSpec:
    return DomainSpec(name="toy", role="new", sources=(str(source),), **{"heldout": 0.1, **kw})


def expected(tokenizer_dir, docs: list[str]) -> np.ndarray:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    return np.array([i for d in docs for i in tok.encode(d, add_special_tokens=False) + [tok.eos_token_id]])


def test_adding_a_file_encodes_only_that_file(tmp_path, tokenizer_dir, encoded_docs):
    corpus = tmp_path / "corpus"
    write_shards(corpus, 3)
    first = prepare_domain(spec_for(corpus), tokenizer_dir, tmp_path / "cache")
    assert sum(encoded_docs) == 180 and len(first.train_files) == 3
    encoded_docs.clear()
    added = write_shards(corpus, 1, docs_per_file=25, start=3)[0]
    second = prepare_domain(spec_for(corpus), tokenizer_dir, tmp_path / "cache")
    assert second.dir != first.dir
    assert sum(encoded_docs) == len(added) == 25  # the three old shards were reused, not re-encoded
    train, val, _ = load_domain_documents(spec_for(corpus))
    np.testing.assert_array_equal(second.train_tokens(), expected(tokenizer_dir, train))
    np.testing.assert_array_equal(second.val_tokens(), expected(tokenizer_dir, val))
    assert second.heldout_texts() == val and (second.n_train_docs, second.n_val_docs) == (len(train), len(val))


def test_domain_train_files_are_links_to_the_shards_not_copies(tmp_path, tokenizer_dir):
    write_shards(tmp_path / "corpus", 2)
    dom = prepare_domain(spec_for(tmp_path / "corpus"), tokenizer_dir, tmp_path / "cache")
    shard_files = sorted((tmp_path / "cache" / tokens.SHARDS_DIR).glob("*/train.bin"))
    assert len(shard_files) == 2
    inodes = {os.stat(path).st_ino for path, _ in dom.train_parts()}
    assert inodes == {os.stat(p).st_ino for p in shard_files}


def test_sampler_reads_shards_exactly_as_one_array(tmp_path, tokenizer_dir):
    per_file = write_shards(tmp_path / "sharded", 4, docs_per_file=40)
    single = tmp_path / "single.txt"
    single.write_text("\n".join(d for docs in per_file for d in docs) + "\n", encoding="utf-8")
    sharded = prepare_domain(spec_for(tmp_path / "sharded"), tokenizer_dir, tmp_path / "cache")
    one = prepare_domain(spec_for(single), tokenizer_dir, tmp_path / "cache")
    assert len(sharded.train_files) == 4 and one.train_files == (("train.bin", one.n_train_tokens),)
    np.testing.assert_array_equal(sharded.train_tokens(), one.train_tokens())
    np.testing.assert_array_equal(sharded.val_tokens(), one.val_tokens())
    np.testing.assert_array_equal(sharded.unigram_counts(), one.unigram_counts())
    assert sharded.heldout_sha256 == one.heldout_sha256
    a = MixtureSampler([sharded], replay_ratio=0.0, batch_size=8, seq_len=48, seed=3)
    b = MixtureSampler([one], replay_ratio=0.0, batch_size=8, seq_len=48, seed=3)
    for step in (0, 1, 7, 40):  # 40 steps run past an epoch: every block, boundary-crossing ones included
        assert np.array_equal(a.batch(step)["input_ids"], b.batch(step)["input_ids"])
        assert np.array_equal(a.batch(step)["targets"], b.batch(step)["targets"])


def test_num_proc_2_builds_shards_in_parallel_with_identical_results(tmp_path, tokenizer_dir):
    write_shards(tmp_path / "corpus", 4)
    one = prepare_domain(spec_for(tmp_path / "corpus"), tokenizer_dir, tmp_path / "a", num_proc=1)
    two = prepare_domain(spec_for(tmp_path / "corpus"), tokenizer_dir, tmp_path / "b", num_proc=2)
    assert one.dir.name == two.dir.name and one.train_files == two.train_files
    np.testing.assert_array_equal(one.train_tokens(), two.train_tokens())
    np.testing.assert_array_equal(one.val_tokens(), two.val_tokens())


def test_max_docs_stops_in_the_middle_of_the_shards(tmp_path, tokenizer_dir, encoded_docs):
    write_shards(tmp_path / "corpus", 4)
    dom = prepare_domain(spec_for(tmp_path / "corpus", max_docs=100), tokenizer_dir, tmp_path / "cache")
    train, val, _ = load_domain_documents(spec_for(tmp_path / "corpus", max_docs=100))
    assert dom.n_train_docs + dom.n_val_docs == 100 == sum(encoded_docs) and len(dom.train_files) == 2
    np.testing.assert_array_equal(dom.train_tokens(), expected(tokenizer_dir, train))


def test_a_damaged_shard_is_rebuilt(tmp_path, tokenizer_dir):
    write_shards(tmp_path / "corpus", 2)
    good = prepare_domain(spec_for(tmp_path / "corpus"), tokenizer_dir, tmp_path / "cache")
    reference = np.array(good.train_tokens())
    path, _ = good.train_parts()[1]
    with open(path, "r+b") as f:  # the domain's link and the shard's file are one file
        f.truncate(os.path.getsize(path) - 4)
    again = prepare_domain(spec_for(tmp_path / "corpus"), tokenizer_dir, tmp_path / "cache")
    np.testing.assert_array_equal(again.train_tokens(), reference)


# -- the encoder -----------------------------------------------------------------------------------------------


def spm_tokenizer(out, seed: int, vocab_size: int = 320):
    from cptlab.tokenizer.hf import export_hf_tokenizer
    from cptlab.tokenizer.spm import train_spm

    model = train_spm(sentences(400, seed=seed), out, vocab_size=vocab_size, seed=0)
    export_hf_tokenizer(model, out)
    return out


def test_sentencepiece_encodes_when_it_gives_the_hf_ids_and_the_arrays_are_identical(tmp_path):
    import shutil

    tok_dir = spm_tokenizer(tmp_path / "spm", seed=0)
    write_shards(tmp_path / "corpus", 2)
    docs = [d for part in sorted((tmp_path / "corpus").glob("*.gz")) for d in gzip.open(part, "rt").read().split("\n")
            if d]
    from transformers import AutoTokenizer

    assert tokens.fastest_encoder(AutoTokenizer.from_pretrained(str(tok_dir)), tok_dir, docs[:50]) == "spm"
    dom = prepare_domain(spec_for(tmp_path / "corpus"), tok_dir, tmp_path / "cache")
    train, val, _ = load_domain_documents(spec_for(tmp_path / "corpus"))
    np.testing.assert_array_equal(dom.train_tokens(), expected(tok_dir, train))
    np.testing.assert_array_equal(dom.val_tokens(), expected(tok_dir, val))
    pooled = prepare_domain(spec_for(tmp_path / "corpus"), tok_dir, tmp_path / "cache3", num_proc=2)
    np.testing.assert_array_equal(pooled.train_tokens(), dom.train_tokens())  # SentencePiece in the workers too
    # A tokenizer.model that is not the tokenizer's own fails the check: the HF encoder is used, ids unchanged.
    mismatched = shutil.copytree(tok_dir, tmp_path / "mismatched")
    spm_tokenizer(tmp_path / "other", seed=5, vocab_size=300)
    shutil.copy(tmp_path / "other" / "tokenizer.model", mismatched / "tokenizer.model")
    assert tokens.fastest_encoder(AutoTokenizer.from_pretrained(str(mismatched)), mismatched, docs[:50]) == "hf"
    again = prepare_domain(spec_for(tmp_path / "corpus"), mismatched, tmp_path / "cache2")
    np.testing.assert_array_equal(again.train_tokens(), expected(mismatched, train))


def test_encoder_threads_follow_the_allowed_cpus_and_are_shared_out_among_workers(tmp_path, monkeypatch):
    import subprocess
    import sys

    if not hasattr(os, "sched_setaffinity"):
        pytest.skip("no CPU affinity on this platform")
    # A process pinned to one CPU (taskset, a SLURM allocation) counts one, whatever the node has.
    code = "import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); " \
           "from cptlab.data.tokens import usable_cpus; print(usable_cpus())"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "1\n"
    assert tokens.usable_cpus() == len(os.sched_getaffinity(0))

    # 5 allowed CPUs, num_proc=2: the parent's SentencePiece uses 5 threads, each worker 5 // 2 = 2.
    tok_dir = spm_tokenizer(tmp_path / "spm", seed=0)
    write_shards(tmp_path / "corpus", 3)
    monkeypatch.setattr(tokens, "usable_cpus", lambda: 5)
    monkeypatch.setattr(tokens, "_WORKER", None)  # the in-process "worker" sets these; restored afterwards
    monkeypatch.setenv("RAYON_NUM_THREADS", "")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    made, pools = [], []
    real_init = tokens.SpmEncoder.__init__
    monkeypatch.setattr(tokens.SpmEncoder, "__init__",
                        lambda self, model_file, num_threads=1: made.append(num_threads) or real_init(
                            self, model_file, num_threads))

    class InProcessPool:  # the spawn pool's protocol, run here so the initializer's arguments can be seen
        def __init__(self, workers, initializer, initargs):
            pools.append(workers)
            initializer(*initargs)

        def imap_unordered(self, fn, jobs):
            return map(fn, jobs)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(tokens.multiprocessing, "get_context", lambda method: type("Ctx", (), {"Pool": InProcessPool}))
    dom = prepare_domain(spec_for(tmp_path / "corpus"), tok_dir, tmp_path / "cache", num_proc=2)
    assert pools == [2] and made[-2:] == [5, 2]  # the parent's encoder, then the worker's
    # A worker on the Rust tokenizer (byte-level BPE bases) gets the same share of threads.
    assert os.environ["RAYON_NUM_THREADS"] == "2" and os.environ["TOKENIZERS_PARALLELISM"] == "true"
    train, _, _ = load_domain_documents(spec_for(tmp_path / "corpus"))
    np.testing.assert_array_equal(dom.train_tokens(), expected(tok_dir, train))


def test_a_source_without_documents_is_one_line_naming_it(tmp_path, tokenizer_dir):
    write_shards(tmp_path / "corpus", 1)
    blank = tmp_path / "blank.txt"
    blank.write_text("\n   \n\t\n")
    from cptlab.errors import CptlabError

    spec = DomainSpec(name="toy", role="new", sources=(str(tmp_path / "corpus"), str(blank)), heldout=0.1)
    with pytest.raises(CptlabError) as e:
        prepare_domain(spec, tokenizer_dir, tmp_path / "cache")
    assert str(e.value) == f"data source {blank} has no documents (all 2 are empty or whitespace)"

"""pipeline.build_tokenizer: a warm start finds the shared tokenizer by its sources' fingerprints
without reading a document, and a changed source file gives a new tokenizer."""

from __future__ import annotations

import os
import random

import pytest

import cptlab.run.pipeline as pipeline
import cptlab.tokenizer.prepare as prepare
from cptlab.run.plan_values import data_plan_of, parts_of
from cptlab.utils.hashing import hash_dir


def make_docs(seed: int, n: int = 300) -> list[str]:
    rng = random.Random(seed)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 8))) for _ in range(400)]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(5, 30))) for _ in range(n)]


def test_warm_tokenizer_cache_reads_no_documents_and_follows_source_changes(tmp_path, compose_cfg, spy):
    new, old = tmp_path / "new.txt", tmp_path / "old.txt"
    new.write_text("\n".join(make_docs(seed=0)) + "\n")
    old.write_text("\n".join(make_docs(seed=1)) + "\n")
    cfg = compose_cfg(["debug=smoke", "tokenizer=train", "data=files", f"data.domains.new.sources=[{new}]",
                       f"data.domains.old.sources=[{old}]", f"paths.cache_dir={tmp_path / 'cache'}",
                       "tokenizer.vocab_size=400"])
    reads, trainings = spy(pipeline, "train_documents"), spy(prepare, "train_spm")

    first = pipeline.build_tokenizer(parts_of(cfg), tmp_path / "run1")
    assert trainings and reads
    reads.clear()
    second = pipeline.build_tokenizer(parts_of(cfg), tmp_path / "run2")
    assert reads == [] and len(trainings) == 1 and hash_dir(first) == hash_dir(second)

    new.write_text("\n".join(make_docs(seed=2)) + "\n")
    os.utime(new, ns=(0, 10**18))  # a new mtime even on a coarse-grained file system
    third = pipeline.build_tokenizer(parts_of(cfg), tmp_path / "run3")
    assert len(trainings) == 2 and hash_dir(third) != hash_dir(first)


def test_tokenizer_stats_are_cached_and_keyed_by_tokenizer(tmp_path, compose_cfg, monkeypatch):
    src = tmp_path / "new.txt"
    src.write_text("\n".join(make_docs(seed=0)) + "\n")
    overrides = ["debug=smoke", "tokenizer=train", "data=files", f"data.domains.new.sources=[{src}]",
                 f"data.domains.old.sources=[{src}]",
                 f"paths.cache_dir={tmp_path / 'cache'}"]
    small = pipeline.build_tokenizer(parts_of(compose_cfg([*overrides, "tokenizer.vocab_size=300"])), tmp_path / "a")
    cfg = compose_cfg([*overrides, "tokenizer.vocab_size=400"])
    tok_dir = pipeline.build_tokenizer(parts_of(cfg), tmp_path / "b")
    cold = pipeline.tokenizer_stats(data_plan_of(cfg), tok_dir, None)
    assert set(cold) == {"new", "old"} and cold["new"]["final"] == cold["new"]["base"] > 0

    def no_reading(*args, **kwargs):
        raise AssertionError("documents read")

    monkeypatch.setattr(pipeline, "build_data", no_reading)
    assert pipeline.tokenizer_stats(data_plan_of(cfg), tok_dir, None) == cold  # warm: no document read
    with pytest.raises(AssertionError, match="documents read"):  # another tokenizer: another entry
        pipeline.tokenizer_stats(data_plan_of(cfg), small, None)

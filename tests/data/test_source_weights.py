"""Per-source weights within a domain (cptlab.data.source_weights): exact shares of the domain's rows, every source
its own stream of blocks, the config's checks, and token caches that re-weighting (or staging) never rebuilds."""

from __future__ import annotations

import json
import math
from fractions import Fraction

import numpy as np
import pytest

from cptlab.data import tokens
from cptlab.data.bijection import KeyedPermutation
from cptlab.data.mixture import MixtureSampler
from cptlab.data.source_weights import SourceSplit, resolve_source_weights
from cptlab.data.tokens import DomainTokens
from cptlab.errors import CptlabError
from cptlab.run.plan_values import data_plan_of

SEQ = 8


def sourced_domain(tmp_path, sizes: dict[str, list[int]], weights: dict[str, float], name: str = "zh",
                   record_sources: bool = True) -> DomainTokens:
    """A domain whose train files (one per shard, `sizes`: source -> tokens of each of its files) hold
    `offset + position in the domain's stream`, so every row names where it was read."""
    directory = tmp_path / name
    directory.mkdir()
    files, sources, pos = [], [], 0
    for source, shard_sizes in sizes.items():
        for n in shard_sizes:
            file = f"train-{len(files):05d}.bin"
            (1_000_000 + pos + np.arange(n)).astype(np.uint32).tofile(directory / file)
            files.append((file, n))
            sources.append(source)
            pos += n
    np.zeros(10, dtype=np.uint32).tofile(directory / "val.bin")
    return DomainTokens(name=name, role="new", weight=1.0, dir=directory, dtype="uint32", n_train_tokens=pos,
                        n_val_tokens=10, n_train_docs=1, n_val_docs=1, val_bytes=10, eos_id=0,
                        train_files=tuple(files), train_sources=tuple(sources) if record_sources else (),
                        source_weights=resolve_source_weights(name, list(sizes), weights))


def test_each_source_gets_its_exact_share_of_the_domains_rows():
    split = SourceSplit([("a", 3.0), ("b", 1.0), ("c", 0.7)])
    assert split.shares == [Fraction(30, 47), Fraction(10, 47), Fraction(7, 47)]
    previous = [0, 0, 0]
    for rows in range(1, 2000):
        now = split.rows(rows)
        assert sum(now) == rows
        assert all(0 <= n - p <= 1 for n, p in zip(now, previous))  # one domain row goes to one source
        assert all(abs(n - share * rows) < 1 for n, share in zip(now, split.shares)), rows  # within one row
        previous = now
    assert SourceSplit([("only", 2.0)]).rows(17) == [17]


def test_sources_are_streams_of_their_own_blocks(tmp_path, make_domain):
    # a: two shards (a block may straddle them), b: one shard
    zh = sourced_domain(tmp_path, {"a": [300, 161], "b": [241]}, {"a": 3})
    en = make_domain("en", "replay")
    sampler = MixtureSampler([zh, en], replay_ratio=0.25, batch_size=6, seq_len=SEQ, seed=5)
    ranges = {"a": (0, 461), "b": (461, 702)}
    n_blocks = {"a": 460 // SEQ, "b": 240 // SEQ}
    seen = {"a": [], "b": []}
    for s in range(80):
        batch = sampler.batch(s)
        ids = batch["input_ids"].numpy()
        assert np.array_equal(batch["targets"].numpy()[:, :-1], ids[:, 1:])
        for row in ids[batch["domain"].numpy() == 0]:
            pos = int(row[0]) - 1_000_000
            source = "a" if pos < 461 else "b"
            start, end = ranges[source]
            assert (pos - start) % SEQ == 0 and pos + SEQ + 1 <= end, (s, pos)  # a block of that source only
            np.testing.assert_array_equal(row, 1_000_000 + pos + np.arange(SEQ))
            seen[source].append((pos - start) // SEQ)
    drawn = dict(zip(("a", "b"), sampler._splits[0].rows(sampler._rows_before(80)[0])))
    assert drawn["a"] == pytest.approx(3 * drawn["b"], abs=4)
    for j, source in enumerate(("a", "b")):  # block order: a keyed bijection per source and epoch
        n = n_blocks[source]
        expected = [int(KeyedPermutation(n, (5, 0, j, k // n))(np.array([k % n]))[0]) for k in range(drawn[source])]
        assert sorted(seen[source]) == sorted(expected)
    mix = sampler.mix(80)
    assert mix["zh/a"] + mix["zh/b"] == pytest.approx(mix["zh"]) and mix["zh"] == pytest.approx(0.75)
    assert mix["zh/a"] == drawn["a"] / (80 * 6)
    record = sampler.schedule()
    assert record[0]["source_shares"] == {"zh": {"a": 0.75 * 0.75, "b": 0.75 * 0.25}}


def test_source_weights_resume_bit_identically(tmp_path, make_domain):
    zh = sourced_domain(tmp_path, {"a": [300, 161], "b": [241]}, {"b": 0.4})
    domains = [zh, make_domain("en", "replay")]
    first = MixtureSampler(domains, 0.25, 6, SEQ, seed=1)
    batches = {s: first.batch(s)["input_ids"] for s in range(50)}
    for s in (49, 23, 0):
        assert (MixtureSampler(domains, 0.25, 6, SEQ, seed=1).batch(s)["input_ids"] == batches[s]).all()


def test_a_weighted_source_without_a_block_is_refused(tmp_path):
    zh = sourced_domain(tmp_path, {"a": [300], "b": [5]}, {"a": 2})
    with pytest.raises(CptlabError) as info:
        MixtureSampler([zh], 0.0, 4, SEQ)
    assert str(info.value) == ("data.domains.zh.source_weights: source 'b' has 5 training tokens, fewer than one "
                               "block (data.seq_len+1 = 9); add data to it, lower data.seq_len or drop it from the "
                               "domain's sources")


def test_a_cache_without_source_records_is_named(tmp_path):
    zh = sourced_domain(tmp_path, {"a": [300], "b": [300]}, {"a": 2}, record_sources=False)
    with pytest.raises(CptlabError, match="does not record which source each shard came from"):
        MixtureSampler([zh], 0.0, 4, SEQ)


@pytest.mark.parametrize("weights, role, message", [
    ({"c.txt": 1.0}, "new", "data.domains.zh.source_weights: 'c.txt' is not one of data.domains.zh.sources "
                            "(a.txt, b.txt)"),
    ({"a.txt": 0.0}, "new", "data.domains.zh.source_weights['a.txt']=0.0 must be > 0"),
    ({"a.txt": 2.0}, "eval", "data.domains.zh.source_weights: domain 'zh' has role eval and is never trained on: "
                             "remove its source weights"),
])
def test_source_weight_errors_name_the_key(weights, role, message):
    with pytest.raises(CptlabError) as info:
        resolve_source_weights("zh", ["a.txt", "b.txt"], weights, role)
    assert str(info.value) == message


def test_unlisted_sources_weigh_one():
    assert resolve_source_weights("zh", ["a", "b", "a"], {"b": 2.5}) == (("a", 1.0), ("b", 2.5))
    assert resolve_source_weights("zh", ["a", "b"], {}) == ()


def test_a_staged_reweighted_run_reuses_the_unstaged_runs_caches(compose_cfg, tokenizer_dir, tmp_path, encoded_docs):
    """Stages, temperature and source weights are sampler settings: the composed staged run's token caches are the
    unstaged run's, found by the same keys, and nothing is encoded_docs again (the old cache entry is only relinked)."""
    from cptlab.run.plan_values import stages_of

    words = "the a cat dog sat on mat runs fast model data token train test".split()
    for name, seed in (("news", 1), ("web", 2), ("old", 3)):
        rng = np.random.default_rng(seed)
        docs = [" ".join(rng.choice(words, size=12)) + f" {i}." for i in range(300)]
        (tmp_path / f"{name}.txt").write_text("\n".join(docs) + "\n", encoding="utf-8")
    base = ["data=files", f"data.domains.new.sources=[{tmp_path}/news.txt,{tmp_path}/web.txt]",
            f"data.domains.old.sources=[{tmp_path}/old.txt]", "data.seq_len=16", "data.batch_size=8"]
    staged = [*base, "data.stages=[{until_step: 5, replay_ratio: 0.5}, {weights: {new: 2}}]", "data.temperature=2",
              f"+data.domains.new.source_weights={{{tmp_path}/web.txt: 3}}"]
    cache = tmp_path / "cache"

    def build(overrides):
        cfg = compose_cfg(overrides)
        domains = [tokens.prepare_domain(spec, tokenizer_dir, cache) for spec in data_plan_of(cfg).specs]
        return cfg, domains

    _, plain = build(base)
    assert sum(encoded_docs) > 0
    encoded_docs.clear()
    cfg, weighted = build(staged)
    assert encoded_docs == []  # nothing encoded_docs again
    assert [d.dir for d in weighted] == [d.dir for d in plain]
    assert weighted[0].train_sources == (f"{tmp_path}/news.txt", f"{tmp_path}/web.txt")
    assert dict(weighted[0].source_weights) == {f"{tmp_path}/news.txt": 1.0, f"{tmp_path}/web.txt": 3.0}
    sampler = MixtureSampler(weighted, cfg.data.replay_ratio, cfg.data.batch_size, cfg.data.seq_len,
                             stages=stages_of(cfg.data), temperature=cfg.data.temperature)
    assert [s.ratio for s in sampler.stages] == [Fraction(1, 2), Fraction(1, 4)]
    assert sampler.batch(6)["input_ids"].shape == (8, 16)

    # A cache entry from before per-source records: relinked from its shards, not re-encoded_docs.
    meta_path = plain[0].dir / "meta.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    del meta["train_sources"]
    meta_path.write_text(json.dumps(meta), encoding="utf-8")
    _, again = build(staged)
    assert encoded_docs == [] and again[0].train_sources == weighted[0].train_sources
    assert "train_sources" in json.loads(meta_path.read_text(encoding="utf-8"))
    mix = MixtureSampler(again, 0.25, 8, 16).mix(10)
    assert math.isclose(mix["new"] + mix["old"], 1.0)
    assert math.isclose(mix[f"new/{tmp_path}/news.txt"] + mix[f"new/{tmp_path}/web.txt"], mix["new"])

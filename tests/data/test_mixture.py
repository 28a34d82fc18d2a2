"""The mixture sampler: exact per-batch counts, carried fractions, pure-function batches, blocks, eval blocks."""

from __future__ import annotations

import math
import pickle
from fractions import Fraction

import numpy as np
import pytest
import torch

from cptlab.data.bijection import KeyedPermutation
from cptlab.data.mixture import MixtureSampler, blocks_sha256, eval_blocks
from cptlab.errors import CptlabError


def exact_shares(domains, replay_ratio) -> dict[str, Fraction]:
    def exact(x):  # the sampler reads 0.3 as 3/10, not as the nearest binary float
        return Fraction(x).limit_denominator(10_000)

    role_share = {"replay": exact(replay_ratio), "new": 1 - exact(replay_ratio)}
    totals = {r: sum(exact(d.weight) for d in domains if d.role == r) for r in role_share}
    return {d.name: role_share[d.role] * exact(d.weight) / totals[d.role] if totals[d.role] else 0 for d in domains}


def check_schedule(sampler, domains, replay_ratio, steps):
    """Every invariant of the row schedule over `steps` steps, in exact arithmetic."""
    B = sampler.batch_size
    shares = exact_shares(domains, replay_ratio)
    total = dict.fromkeys(shares, 0)
    replay_rows = 0
    for s in range(steps):
        counts = sampler.counts(s)
        assert sum(counts.values()) == B
        for name, c in counts.items():
            assert math.floor(shares[name] * B) <= c <= math.ceil(shares[name] * B), (s, name, c)  # within one row
            total[name] += c
            assert abs(total[name] - shares[name] * B * (s + 1)) < 1, (s, name)  # the fraction is carried
        replay_rows += sum(counts[d.name] for d in domains if d.role == "replay")
        assert replay_rows == math.floor(Fraction(replay_ratio).limit_denominator(10_000) * B * (s + 1))
    return total


def test_two_domains_fraction_carried_across_batches(make_domain):
    domains = [make_domain("zh", "new"), make_domain("en", "replay")]
    sampler = MixtureSampler(domains, replay_ratio=0.3, batch_size=4, seq_len=8)
    per_step = [sampler.counts(s)["en"] for s in range(10)]
    assert set(per_step) == {1, 2}  # 0.3 * 4 = 1.2 rows: mostly 1, every fifth batch 2
    assert sum(per_step) == 12 and sum(per_step[:5]) == 6
    total = check_schedule(sampler, domains, 0.3, 1000)
    assert total == {"zh": 2800, "en": 1200}
    assert sampler.replay_share(1000) == 0.3
    assert sampler.replay_share(3) == math.floor(0.3 * 12) / 12


def test_many_domains_per_role_keep_every_invariant(make_domain):
    domains = [
        make_domain("a", "new", 1.0),
        make_domain("b", "new", 2.0),
        make_domain("c", "new", 3.5),
        make_domain("r1", "replay", 1.0),
        make_domain("r2", "replay", 1.0),
        make_domain("r3", "replay", 0.5),
    ]
    for ratio, B in ((0.25, 7), (0.37, 16), (0.1, 3)):
        check_schedule(MixtureSampler(domains, ratio, B, seq_len=8), domains, ratio, 1000)


def test_random_configurations(make_domain):
    rng = np.random.default_rng(0)
    pool = [make_domain(f"d{i}", "new" if i < 4 else "replay") for i in range(8)]
    for _ in range(12):
        n_new, n_replay = int(rng.integers(1, 5)), int(rng.integers(1, 5))
        picked = pool[:n_new] + pool[4 : 4 + n_replay]
        domains = [type(d)(**{**d.__dict__, "weight": float(rng.integers(1, 9))}) for d in picked]
        ratio, B = round(float(rng.uniform(0.05, 0.9)), 2), int(rng.integers(1, 33))
        check_schedule(MixtureSampler(domains, ratio, B, seq_len=8), domains, ratio, 300)


def test_replay_ratio_zero_keeps_replay_domains_out_of_training(make_domain):
    domains = [make_domain("zh", "new"), make_domain("en", "replay")]
    sampler = MixtureSampler(domains, 0.0, 8, 8)
    assert all(sampler.counts(s) == {"zh": 8, "en": 0} for s in range(20))
    assert not sampler.batch(3)["is_replay"].any()


def test_counts_and_batches_are_pure_functions_of_step(make_domain):
    domains = [make_domain("a", "new", 1.0), make_domain("b", "new", 2.0), make_domain("r", "replay")]
    sampler = MixtureSampler(domains, 0.3, 6, 16, seed=5)
    sequential = {s: sampler.batch(s) for s in range(40)}
    resumed = MixtureSampler(domains, 0.3, 6, 16, seed=5)  # a fresh process resuming at step 37
    for s in (37, 38, 39, 2):
        assert resumed.counts(s) == sampler.counts(s)
        for key, value in resumed.batch(s).items():
            assert torch.equal(value, sequential[s][key]), (s, key)
    assert not torch.equal(
        MixtureSampler(domains, 0.3, 6, 16, seed=6).batch(0)["input_ids"], sequential[0]["input_ids"]
    )


def test_random_access_matches_sequential_across_periods(make_domain):
    domains = [make_domain("a", "new", 1.0), make_domain("b", "new", 1.37), make_domain("r", "replay", 2.1)]
    sequential = MixtureSampler(domains, 0.273, 32, 8)
    # The extra-row schedules repeat every 125 (replay) and 29625 (new) steps: 3000 steps cross the replay period
    # many times and the new role's stored checkpoints (every 256 steps) are needed for the random jumps.
    expected = [sequential.counts(s) for s in range(3000)]
    jumping = MixtureSampler(domains, 0.273, 32, 8)
    for s in np.random.default_rng(0).permutation(3000)[:400]:
        assert jumping.counts(int(s)) == expected[s]


def test_batch_contents(make_domain):
    domains = [make_domain("a", "new", n_train=900), make_domain("r", "replay", n_train=500)]
    seq_len = 16
    sampler = MixtureSampler(domains, 0.5, 8, seq_len)
    arrays = [np.asarray(d.train_tokens(), dtype=np.int64) for d in domains]
    for s in range(30):
        batch = sampler.batch(s)
        ids, targets, domain = batch["input_ids"], batch["targets"], batch["domain"]
        assert ids.shape == targets.shape == (8, seq_len) and ids.dtype == targets.dtype == torch.long
        assert torch.equal(ids[:, 1:], targets[:, :-1]) and torch.equal(targets, ids + 1)
        assert batch["is_replay"].dtype == torch.bool and torch.equal(batch["is_replay"], domain == 1)
        assert int(batch["step"]) == s and batch["step"].dim() == 0
        assert torch.bincount(domain, minlength=2).tolist() == [sampler.counts(s)["a"], sampler.counts(s)["r"]]
        for row, i in zip(ids.numpy(), domain.tolist()):
            start = int(row[0] - arrays[i][0])  # the values encode positions: the row is that domain's block
            assert start % seq_len == 0 and start + seq_len < len(arrays[i])
            np.testing.assert_array_equal(row, arrays[i][start : start + seq_len])


def test_rank_slices_partition_the_global_batch(make_domain):
    domains = [make_domain("a", "new"), make_domain("r", "replay")]
    sampler = MixtureSampler(domains, 0.25, 8, 8)
    for s in range(5):
        full = sampler.batch(s)
        parts = [sampler.batch(s, rank=r, world_size=2) for r in range(2)]
        for key in ("input_ids", "targets", "domain", "is_replay"):
            assert torch.equal(parts[0][key], full[key][0::2]) and torch.equal(parts[1][key], full[key][1::2])
    with pytest.raises(CptlabError, match="data.batch_size=8 is not divisible by the world size 3"):
        sampler.batch(0, rank=0, world_size=3)


def test_epochs_wrap_with_a_new_permutation(make_domain):
    seq_len, n_blocks = 10, 5
    domains = [make_domain("small", "new", n_train=seq_len * n_blocks + 1)]
    sampler = MixtureSampler(domains, 0.0, 2, seq_len, seed=3)
    consumed = []
    for s in range(10):
        batch = sampler.batch(s)
        # undo the in-batch shuffle: rows are shuffled with default_rng([seed, step])
        order = np.argsort(np.random.default_rng([3, s]).permutation(2))
        consumed += [int(batch["input_ids"][j, 0] - 1_000_000) // seq_len for j in order]
    epochs = [consumed[e * n_blocks : (e + 1) * n_blocks] for e in range(4)]
    for e, blocks in enumerate(epochs):
        assert blocks == KeyedPermutation(n_blocks, (3, 0, e))(np.arange(n_blocks)).tolist()
        assert sorted(blocks) == list(range(n_blocks))  # every block once per epoch
    assert len({tuple(b) for b in epochs}) > 1


def test_sampler_pickles_without_open_memmaps(make_domain):
    domains = [make_domain("a", "new"), make_domain("r", "replay")]
    sampler = MixtureSampler(domains, 0.5, 4, 8)
    first = sampler.batch(7)
    blob = pickle.dumps(sampler)
    assert len(blob) < 10_000
    clone = pickle.loads(blob)
    assert torch.equal(clone.batch(7)["input_ids"], first["input_ids"])


def test_configuration_errors(make_domain):
    new, replay = make_domain("zh", "new"), make_domain("en", "replay")
    # replay_ratio / batch_size / seq_len / seed ranges: refused by cptlab.run.validate (tests/reliability/test_validation)
    with pytest.raises(CptlabError, match="data.replay_ratio is 0.2 but no domain has role 'replay'"):
        MixtureSampler([new], 0.2, 4, 8)
    with pytest.raises(CptlabError, match="data.replay_ratio is 0.2 but no domain has role 'new' with weight > 0"):
        MixtureSampler([replay], 0.2, 4, 8)
    tiny = make_domain("tiny", "replay", n_train=8)
    with pytest.raises(
        CptlabError, match=r"domain 'tiny' has 8 training tokens, fewer than one block \(data.seq_len\+1 = 9\)"
    ):
        MixtureSampler([new, tiny], 0.5, 4, 8)
    MixtureSampler([new, tiny], 0.0, 4, 8)  # an unsampled replay domain may be short: it is only evaluated


def test_eval_blocks(make_domain):
    domain = make_domain("zh", "new", n_val=101)
    blocks = eval_blocks(domain, seq_len=16)
    assert blocks.shape == (6, 17) and blocks.dtype == np.int64  # (101 - 1) // 16 blocks
    val = np.asarray(domain.val_tokens(), dtype=np.int64)
    for i, block in enumerate(blocks):
        np.testing.assert_array_equal(block, val[i * 16 : i * 16 + 17])
    assert eval_blocks(domain, 16, max_blocks=2).shape == (2, 17)
    assert eval_blocks(domain, 100).shape == (1, 101)
    with pytest.raises(CptlabError) as e:
        eval_blocks(domain, 100 + 1)
    assert str(e.value) == (
        "held-out split of domain 'zh' has 101 tokens, fewer than one eval block (data.seq_len+1 = 102); "
        "raise data.domains.zh.heldout or lower data.seq_len"
    )


def test_eval_blocks_spread_over_the_whole_held_out_stream(make_domain):
    # 1000 held-out tokens = 62 windows of 16; the held-out array is source after source, so the first
    # blocks alone would score only the first source.
    domain = make_domain("zh", "new", n_val=1000)
    val = np.asarray(domain.val_tokens(), dtype=np.int64)
    blocks = eval_blocks(domain, seq_len=16, max_blocks=8)
    starts = [int(np.flatnonzero(val == b[0])[0]) for b in blocks]
    assert starts == [3 * 16, 11 * 16, 19 * 16, 27 * 16, 34 * 16, 42 * 16, 50 * 16, 58 * 16]  # middles of 8 stretches
    for start, block in zip(starts, blocks):
        np.testing.assert_array_equal(block, val[start : start + 17])
    # Every eighth of the stream (a source holding >= 1/max_blocks of the tokens) gets one block.
    assert sorted({s * 8 // 1000 for s in starts}) == list(range(8))
    # Deterministic: the same blocks at every call, so at every evaluation and in every run on the same data.
    np.testing.assert_array_equal(blocks, eval_blocks(domain, 16, max_blocks=8))
    assert blocks_sha256(blocks) == blocks_sha256(eval_blocks(domain, 16, max_blocks=8))
    assert blocks_sha256(blocks) != blocks_sha256(eval_blocks(domain, 16, max_blocks=7))
    assert blocks_sha256(blocks) != blocks_sha256(eval_blocks(domain, 15, max_blocks=8))
    assert eval_blocks(domain, 16, max_blocks=0).shape == (0, 17)
    # max_blocks beyond what there is: every window, in order.
    np.testing.assert_array_equal(eval_blocks(domain, 16, max_blocks=500), eval_blocks(domain, 16))


def test_blocks_hash_sees_shape_and_ids():
    a = np.arange(34, dtype=np.int64).reshape(2, 17)
    assert blocks_sha256(a) == blocks_sha256(torch.from_numpy(a.copy()))  # the tensors the evaluator holds
    assert blocks_sha256(a) != blocks_sha256(a.reshape(1, 34))
    b = a.copy()
    b[1, 5] += 1
    assert blocks_sha256(a) != blocks_sha256(b)


def test_an_eval_domain_is_never_drawn_and_the_replay_share_stays_exact(make_domain):
    """role eval: the stream is the one without the domain, batch for batch (so the replay share is exact)."""
    zh, en = make_domain("zh", "new"), make_domain("en", "replay")
    probe = make_domain("en_eval", "eval", n_train=0, n_val=300)
    with_eval = MixtureSampler([zh, probe, en], replay_ratio=0.3, batch_size=4, seq_len=8)
    without = MixtureSampler([zh, en], replay_ratio=0.3, batch_size=4, seq_len=8)
    assert [d.name for d in with_eval.domains] == ["zh", "en"]
    for step in range(40):
        assert with_eval.counts(step) == without.counts(step)
        a, b = with_eval.batch(step), without.batch(step)
        assert all(torch.equal(a[k], b[k]) for k in ("input_ids", "targets", "domain", "is_replay"))
        assert not ((a["input_ids"] >= 3_000_000) & (a["input_ids"] < 4_000_000)).any()  # none of en_eval's ids
    assert check_schedule(with_eval, [zh, en], 0.3, 500) == {"zh": 1400, "en": 600}
    assert with_eval.replay_share(500) == 0.3

"""Mixture stages (cptlab.data.stages): every stage's shares exact per batch and cumulatively from its own start,
block cursors that continue across stages, resume at any step bit for bit, the config's checks, temperature."""

from __future__ import annotations

import math
import re
from fractions import Fraction

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from cptlab.data.bijection import KeyedPermutation
from cptlab.data.mixture import MixtureSampler
from cptlab.data.stages import Stage, resolve_stages
from cptlab.errors import CptlabError
from cptlab.run.plan_values import stages_of

B, SEQ = 7, 8
# zh and code learn, en is replayed: three stages with three different mixes (0.3 * 7 = 2.1 replay rows, ...)
STAGES = [Stage(until=40, replay_ratio=0.3, weights={"zh": 3.0}, key="data.stages[0]"),
          Stage(until=95, replay_ratio=0.0, weights={"code": 2.5}, key="data.stages[1]"),
          Stage(replay_ratio=0.55, key="data.stages[2]")]
EXPECTED = [  # (first batch, end, {domain: exact share})
    (0, 40, {"zh": Fraction(7, 10) * Fraction(3, 4), "code": Fraction(7, 10) / 4, "en": Fraction(3, 10)}),
    (40, 95, {"zh": Fraction(2, 7), "code": Fraction(5, 7), "en": Fraction(0)}),
    (95, 400, {"zh": Fraction(9, 40), "code": Fraction(9, 40), "en": Fraction(11, 20)}),
]


@pytest.fixture
def three(make_domain):
    return [make_domain("zh", "new", n_train=2001), make_domain("code", "new", n_train=801),
            make_domain("en", "replay", n_train=1201)]


def test_three_stages_over_three_domains_are_each_exact(three):
    sampler = MixtureSampler(three, replay_ratio=0.25, batch_size=B, seq_len=SEQ, stages=STAGES)
    assert [(s.start, s.until) for s in sampler.stages] == [(0, 40), (40, 95), (95, None)]
    for start, end, shares in EXPECTED:
        assert sum(shares.values()) == 1
        total = dict.fromkeys(shares, 0)
        replay_ratio = shares["en"]
        for s in range(start, end):
            counts = sampler.counts(s)
            assert sum(counts.values()) == B
            for name, c in counts.items():
                exact = shares[name] * B
                assert math.floor(exact) <= c <= math.ceil(exact), (s, name, c)  # floor/ceil of this stage's share
                total[name] += c
                assert abs(total[name] - exact * (s - start + 1)) < 1, (s, name)  # carried from the stage's start
            # replay never runs ahead: floor(ratio * B * batches of the stage so far)
            assert total["en"] == math.floor(replay_ratio * B * (s - start + 1))
    assert sampler.counts(50)["en"] == 0  # a stage may give a role's domains no rows at all
    # the exact share of replay rows over the run follows the stages
    rows = sum(sampler.counts(s)["en"] for s in range(200))
    assert sampler.replay_share(200) == rows / (200 * B)


def test_block_cursors_continue_across_stages(three):
    """A domain's blocks are visited in its keyed order per epoch, whatever the stages: its n-th row overall is
    block perm(n) of its epoch; nothing is skipped or repeated at a stage boundary."""
    sampler = MixtureSampler(three, replay_ratio=0.25, batch_size=B, seq_len=SEQ, stages=STAGES, seed=4)
    seen = {d.name: [] for d in three}
    offsets = {d.name: int(np.asarray(d.train_tokens())[0]) for d in three}
    for s in range(160):
        batch = sampler.batch(s)
        for row, i in zip(batch["input_ids"].numpy(), batch["domain"].tolist()):
            name = three[i].name
            seen[name].append((int(row[0]) - offsets[name]) // SEQ)
    for i, d in enumerate(three):
        drawn = sampler._rows_before(160)[i]
        n_blocks = (d.n_train_tokens - 1) // SEQ
        expected = [int(KeyedPermutation(n_blocks, (4, i, k // n_blocks))(np.array([k % n_blocks]))[0])
                    for k in range(drawn)]
        assert sorted(seen[d.name]) == sorted(expected), d.name  # in-batch order is shuffled; the set is not
        assert drawn > n_blocks or d.name == "en"  # zh and code wrap into a second epoch during the run


def test_resume_inside_and_across_stage_boundaries_is_bit_identical(three):
    original = MixtureSampler(three, replay_ratio=0.25, batch_size=B, seq_len=SEQ, stages=STAGES, seed=2)
    sequential = {s: original.batch(s) for s in range(130)}
    for s in (39, 40, 41, 94, 95, 96, 129, 7):  # a fresh process resuming at step s, in any stage
        resumed = MixtureSampler(three, replay_ratio=0.25, batch_size=B, seq_len=SEQ, stages=STAGES, seed=2)
        assert resumed.counts(s) == original.counts(s)
        for key, value in resumed.batch(s).items():
            assert torch.equal(value, sequential[s][key]), (s, key)


def test_without_stages_the_stream_is_the_unstaged_one(three):
    plain = MixtureSampler(three, replay_ratio=0.25, batch_size=B, seq_len=SEQ)
    one_stage = MixtureSampler(three, replay_ratio=0.25, batch_size=B, seq_len=SEQ, stages=[Stage(key="s")])
    for s in range(60):
        assert plain.counts(s) == one_stage.counts(s)
        assert torch.equal(plain.batch(s)["input_ids"], one_stage.batch(s)["input_ids"])
    # a last stage with an end: the defaults are in force after it
    ended = MixtureSampler(three, replay_ratio=0.25, batch_size=B, seq_len=SEQ,
                           stages=[Stage(until=10, replay_ratio=0.0, key="data.stages[0]")])
    assert [s.key for s in ended.stages] == ["data.stages[0]", "data"]
    assert ended.counts(5)["en"] == 0 and ended.stages[1].ratio == Fraction(1, 4)


def test_mix_and_schedule_record(three):
    sampler = MixtureSampler(three, replay_ratio=0.25, batch_size=B, seq_len=SEQ, stages=STAGES)
    mix = sampler.mix(95)
    assert set(mix) == {"zh", "code", "en"} and sum(mix.values()) == pytest.approx(1.0)
    assert mix["en"] == math.floor(Fraction(3, 10) * B * 40) / (95 * B)
    assert sampler.mix(0) == dict.fromkeys(mix, 0.0)
    record = sampler.schedule(batches_per_step=1)
    assert [(r["from_step"], r["until_step"], r["replay_ratio"]) for r in record] == [
        (0, 40, 0.3), (40, 95, 0.0), (95, None, 0.55)]
    assert record[1]["shares"] == {"zh": 2 / 7, "code": 5 / 7, "en": 0.0}
    assert record[0]["until_tokens"] == 40 * B * SEQ
    assert [r["until_step"] for r in sampler.schedule(batches_per_step=5)] == [8, 19, None]


def test_a_stage_needing_rows_from_a_domain_without_blocks_is_refused(make_domain):
    zh, tiny = make_domain("zh", "new"), make_domain("tiny", "replay", n_train=8)
    no_replay_first = [Stage(until=10, replay_ratio=0.0, key="data.stages[0]"),
                       Stage(replay_ratio=0.5, key="data.stages[1]")]
    with pytest.raises(CptlabError) as info:
        MixtureSampler([zh, tiny], 0.0, 4, 8, stages=no_replay_first)
    assert str(info.value) == ("domain 'tiny' has 8 training tokens, fewer than one block (data.seq_len+1 = 9); add "
                               "data to it or lower data.seq_len (data.stages[1] gives it a share)")
    MixtureSampler([zh, tiny], 0.0, 4, 8, stages=no_replay_first[:1])  # no stage gives it rows: fine


@pytest.mark.parametrize("stages, message", [
    ([Stage(until=10, key="data.stages[0]"), Stage(until=10, key="data.stages[1]")],
     "data.stages[1] ends at batch 10, not after its start (batch 10)"),
    ([Stage(weights={"fr": 1.0}, key="data.stages[0]")], "data.stages[0].weights.fr: no trained domain"),
    ([Stage(weights={"zh": 0.0}, key="data.stages[0]")], "data.stages[0].weights.zh=0.0 must be > 0"),
    ([Stage(replay_ratio=1.0, key="data.stages[0]")], "data.stages[0].replay_ratio=1.0 must be in [0, 1)"),
    ([Stage(until=5, key="data.stages[0]"), Stage(replay_ratio=0.5, weights={"en": 1.0}, key="data.stages[1]")],
     "data.stages[1].weights.en: no trained domain"),  # an eval domain is not drawn from
])
def test_sampler_refuses_bad_stages(make_domain, stages, message):
    domains = [make_domain("zh", "new"), make_domain("en", "eval", n_train=0)]
    with pytest.raises(CptlabError, match=re.escape(message)):
        MixtureSampler(domains, 0.0, 4, 8, stages=stages)


def data_node(stages, **data):
    return OmegaConf.create({"domains": {"zh": {"role": "new"}, "code": {"role": "new"}, "en": {"role": "replay"},
                                         "en_eval": {"role": "eval"}},
                             "batch_size": 8, "seq_len": 64, "stages": stages, **data})


def test_stages_of_converts_steps_and_tokens():
    stages = stages_of(data_node([{"until_step": 5, "weights": {"zh": 2}}, {"until_tokens": 8 * 64 * 12},
                                  {"replay_ratio": 0.5}]), batches_per_step=1)
    assert [(s.until, s.replay_ratio, s.weights, s.key) for s in stages] == [
        (5, None, {"zh": 2.0}, "data.stages[0]"), (12, None, None, "data.stages[1]"), (None, 0.5, None,
                                                                                       "data.stages[2]")]
    # with gradient accumulation a step is several global batches (the sampler counts batches)
    accumulated = stages_of(data_node([{"until_step": 5}, {"until_tokens": 8 * 64 * 2 * 6}]),
                            batches_per_step=2)
    assert [s.until for s in accumulated] == [10, 12]
    assert stages_of(data_node([])) == [] and stages_of(data_node(None)) == []


@pytest.mark.parametrize("stages, message", [
    ([{"until_step": 10}, {"until_step": 10}],
     "data.stages[1].until_step=10 ends at step 10, not after data.stages[0] (step 10): stage ends must be "
     "increasing"),
    ([{"until_step": 10}, {"until_tokens": 8 * 64 * 4}],
     "data.stages[1].until_tokens=2048 ends at step 4, not after data.stages[0] (step 10): stage ends must be "
     "increasing"),
    ([{"until_tokens": 1000}], "data.stages[0].until_tokens=1000 is not a positive multiple of the tokens per step, "
                               "512 (data.batch_size=8 x data.seq_len=64)"),
    ([{"replay_ratio": 0.1}, {"replay_ratio": 0.5}],
     "data.stages[0] has no until_step (or until_tokens): only the last stage may run to the end"),
    ([{"until_step": 3, "until_tokens": 512}], "data.stages[0]: set until_step or until_tokens, not both"),
    ([{"weights": {"fr": 1}}], "data.stages[0].weights.fr: no trained domain of that name (trained: zh, code, en)"),
    ([{"weights": {"en_eval": 1}}],
     "data.stages[0].weights.en_eval: no trained domain of that name (an eval domain is never trained on)"),
    ([{"weights": {"code": 0}}], "data.stages[0].weights.code=0 must be > 0"),
    ([{"weights": {"code": -1.5}}], "data.stages[0].weights.code=-1.5 must be > 0"),
    ([{"replay_ratio": 1.0}], "data.stages[0].replay_ratio=1.0 must be in [0, 1)"),
])
def test_stages_of_refuses_in_one_line_naming_the_key(stages, message):
    with pytest.raises(CptlabError) as info:
        stages_of(data_node(stages))
    assert str(info.value) == message


def test_a_replay_ratio_without_a_replay_domain_is_refused():
    data = OmegaConf.create({"domains": {"zh": {"role": "new"}}, "batch_size": 8, "seq_len": 64,
                             "stages": [{"until_step": 4, "replay_ratio": 0.2}]})
    with pytest.raises(CptlabError, match=r"data.stages\[0\].replay_ratio=0.2 but no domain has role 'replay'"):
        stages_of(data)
    data.stages[0].replay_ratio = 0.0  # a stage that gives a role (here: none) no rows is fine
    assert stages_of(data)[0].replay_ratio == 0.0


def test_temperature_scales_weights_by_size(make_domain):
    """share within a role = weight * tokens^(1/T) / sum: T=1 by size, T=2 by its square root."""
    small, mid, big = (make_domain(n, "new", n_train=t) for n, t in (("s", 100), ("m", 400), ("b", 1600)))
    heavy = type(mid)(**{**mid.__dict__, "weight": 3.0})
    shares = lambda T, ds=(small, mid, big): resolve_stages(ds, 0.0, temperature=T)[0].shares  # noqa: E731
    assert shares(1.0) == (Fraction(1, 21), Fraction(4, 21), Fraction(16, 21))
    assert shares(2.0) == (Fraction(1, 7), Fraction(2, 7), Fraction(4, 7))
    assert shares(None) == (Fraction(1, 3),) * 3  # null: the configured weights alone
    assert shares(2.0, (small, heavy, big)) == (Fraction(1, 11), Fraction(6, 11), Fraction(4, 11))  # x weight
    near_uniform = shares(1e6)
    assert all(abs(x - Fraction(1, 3)) < Fraction(1, 1000) for x in near_uniform) and sum(near_uniform) == 1
    assert sum(shares(0.05)) == 1 and shares(0.05)[0] == Fraction(1, 10_000) * shares(0.05)[2]  # a floor, not 0
    # the replay role is scaled on its own
    replay = make_domain("r", "replay", n_train=900)
    mixed = resolve_stages([small, big, replay], 0.25, temperature=2.0)[0].shares
    assert mixed == (Fraction(3, 4) / 5, Fraction(3, 4) * 4 / 5, Fraction(1, 4))

"""Domains and sources added, removed and changed from the command line (cptlab.utils.hydra_overrides), the
mixture keys (data.stages, data.temperature, source_weights) given there, and the demo's annealing experiment,
composed as the CLI composes them (one subprocess smoke run of these forms lives in tests/e2e/test_cli.py)."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from cptlab.errors import CptlabError
from cptlab.run.validate import validate

SMOKE = ["experiment=demo_zh", "debug=smoke"]
CODE = {"role": "replay", "sources": ["demo:code"], "heldout": 0.02, "weight": 1.0, "max_docs": None,
        "text_field": "text", "source_weights": {}}  # the schema's defaults fill what the command line leaves out


@pytest.mark.parametrize("overrides", [
    ["+data.domains.code={role: replay, sources: [demo:code]}"],
    ["++data.domains.code={role: replay, sources: [demo:code]}"],
    ["+data.domains.code.role=replay", "+data.domains.code.sources=[demo:code]"],
], ids=["dict", "force_add", "key_by_key"])
def test_a_domain_is_added_from_the_command_line(compose_cfg, overrides):
    cfg = compose_cfg([*SMOKE, *overrides])
    assert OmegaConf.to_container(cfg.data.domains.code) == CODE
    assert list(cfg.data.domains) == ["zh", "en", "en_eval", "code"]
    validate(cfg)


def test_domains_are_removed_and_changed_from_the_command_line(compose_cfg):
    cfg = compose_cfg([*SMOKE, "+data.domains.code={role: replay, sources: [demo:code], weight: 3}",
                       "~data.domains.en", "data.domains.zh.sources=[demo:zh,demo:en]",
                       "+data.domains.zh.source_weights={demo\\:en: 0.5}", "data.domains.code.heldout=0.05"])
    assert set(cfg.data.domains) == {"zh", "en_eval", "code"}
    assert cfg.data.domains.code.weight == 3.0 and cfg.data.domains.code.heldout == 0.05
    assert dict(cfg.data.domains.zh.source_weights) == {"demo:en": 0.5}
    validate(cfg)


@pytest.mark.parametrize("override, fragment", [
    ("+data.domains.code={rol: replay, sources: [demo:code]}", "Key 'rol' not in 'DomainConfig'"),
    ("+data.domains.code={role: replay, sources: [demo:code], weight: heavy}", "data.domains.code.weight"),
    ("+data.domains.code={role: old, sources: [demo:code]}", "data.domains.code.role='old' must be one of new, replay"),
    ("+data.domains.code.role=replay", "data.domains.code.sources is not set"),
    ("+data.domains.zh.source_weights={demo\\:en: 2}", "'demo:en' is not one of data.domains.zh.sources"),
    ("data.stages=[{until_step: 4}, {until_step: 2}]", "data.stages[1].until_step=2 ends at step 2"),
    ("data.temperature=0", "data.temperature=0.0 must be > 0"),
])
def test_a_bad_domain_or_mixture_override_fails_naming_the_key(compose_cfg, override, fragment):
    with pytest.raises(Exception) as info:
        validate(compose_cfg([*SMOKE, override]))
    message = str(info.value) + str(info.value.__cause__ or "")
    assert fragment in message, message


def test_removing_the_replay_domain_needs_no_replay(compose_cfg):
    with pytest.raises(CptlabError, match="data.replay_ratio=0.25 but no domain has role 'replay'"):
        validate(compose_cfg([*SMOKE, "~data.domains.en"]))
    validate(compose_cfg([*SMOKE, "~data.domains.en", "data.replay_ratio=0"]))


def test_a_sweep_over_an_added_domains_weight_composes_every_job(compose_cfg, hydra_conf):
    """-m: every job of the sweep (as Hydra's basic sweeper splits it) composes and validates."""
    from cptlab.run.sweep import check_jobs, job_overrides
    from cptlab.utils.console import CONF_DIR

    overrides = [*SMOKE, "+data.domains.code={role: replay, sources: [demo:code]}", "data.domains.code.weight=1,2",
                 "~data.domains.en", "data.stages=[{until_step: 4}, {replay_ratio: 0.5}],[]"]
    cfg = compose_cfg([*SMOKE], hydra_node=True, config_dir=CONF_DIR)
    jobs = job_overrides(cfg, overrides)
    assert len(jobs) == 4
    with hydra_conf(CONF_DIR):  # check_jobs composes each job with Hydra's own compose
        check_jobs(jobs)
    weights = sorted((compose_cfg(job).data.domains.code.weight, len(compose_cfg(job).data.stages)) for job in jobs)
    assert weights == [(1.0, 0), (1.0, 2), (2.0, 0), (2.0, 2)]


def test_mixture_keys_from_the_command_line(compose_cfg):
    cfg = compose_cfg([*SMOKE, "data.stages=[{until_tokens: 2048, weights: {zh: 2}}, {replay_ratio: 0.5}]",
                       "data.temperature=1.5"])
    assert OmegaConf.to_container(cfg.data.stages) == [
        {"until_step": None, "until_tokens": 2048, "replay_ratio": None, "weights": {"zh": 2.0}},
        {"until_step": None, "until_tokens": None, "replay_ratio": 0.5, "weights": {}}]
    assert cfg.data.temperature == 1.5
    validate(cfg)


def test_the_anneal_experiment_raises_replay_exactly_for_the_wsd_decay(compose_cfg):
    from cptlab.run.plan_values import stages_of
    from cptlab.training.schedule import LRSchedule

    for extra, decay_start in (([], 120), (["debug=smoke"], 6)):
        cfg = compose_cfg(["experiment=demo_zh_anneal", *extra])
        o = cfg.optim
        schedule = LRSchedule(total_steps=cfg.trainer.max_steps, warmup_steps=o.warmup_steps, kind=o.schedule,
                              min_lr_ratio=o.min_lr_ratio, decay_fraction=o.decay_fraction)
        # the linear decay starts at decay_start (from the peak): every later step is below it, none before
        assert schedule.factor(decay_start - 1) == schedule.factor(decay_start) == 1.0 > schedule.factor(decay_start + 1)
        stages = stages_of(cfg.data)
        assert [(s.until, s.replay_ratio) for s in stages] == [(decay_start, None), (None, 0.5)]
        assert cfg.data.replay_ratio == 0.25  # before the decay: demo_zh's
    validate(cfg)  # (the smoke run's: the full one needs the built demo base)

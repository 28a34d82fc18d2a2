"""Values that libraries reject late (after the tokenizer and caches are built, after DDP ranks spawn) or with a
traceback naming no key are refused by the one validation pass, in one line naming the key."""

from __future__ import annotations

import pytest

from cptlab.errors import CptlabError
from cptlab.run.validate import config_warnings, validate

C = pytest.param
CASES = [
    C(["retention=ema", "retention.decay=1.5"], "retention.decay=1.5", id="ema_decay_above_1"),
    C(["retention=mean_teacher", "retention.weight=0.5", "retention.on=bogus"], "retention.on='bogus'",
      id="mean_teacher_rows_unknown"),
    C(["optim.betas=[1.5,0.9]"], "optim.betas=[1.5, 0.9]", id="beta_above_1"),
    C(["optim.betas=[0.9]"], "optim.betas=[0.9]", id="one_beta"),
    C(["optim.eps=-1"], "optim.eps=-1", id="eps_negative"),
    C(["trainer.precision=bogus"], "trainer.precision='bogus'", id="precision_unknown"),
    C(["tokenizer.character_coverage=1.5"], "tokenizer.character_coverage=1.5", id="coverage_above_1"),
    C(["tokenizer.character_coverage=0.5"], "tokenizer.character_coverage=0.5", id="coverage_below_spm_range"),
    C(["trainer=ddp", "trainer.accelerator=cpu", "trainer.strategy=ddp_spawn", "trainer.precision=32-true",
       "trainer.devices=3"], "trainer.devices=3", id="batch_not_divisible_by_devices"),
    C(["train.nan_policy=skip_batch", "train.max_consecutive_skipped=0"], "train.max_consecutive_skipped=0",
      id="skip_limit_0"),
    C(["train.on_changed_inputs=maybe"], "train.on_changed_inputs='maybe'", id="changed_inputs_policy_unknown"),
    C(["model.config.tie_word_embeddings=true", "optim.lr_scale.embeddings=0.1"],
      "optim.lr_scale.lm_head=1.0 differs from optim.lr_scale.embeddings=0.1, but the model ties", id="tied_lr_scale"),
    # no vocabulary extension, no new rows: the scale did nothing without a word (issue #26, 10)
    C(["optim.lr_scale.new_rows=10"], "optim.lr_scale.new_rows=10 scales the new token rows, which only "
      "tokenizer=extend adds", id="new_rows_scale_without_extension"),
    C(["data.domains.old.sources=???"], "data.domains.old.sources is not set (??? in the config): give "
      "data.domains.old.sources=[PATH,...], or drop the replay domain", id="unset_sources"),
]
# Each value below was once refused (or, for a domain weight of 0, accepted) by the module that uses it, after
# the tokenizer and the token caches were built; now by the rule beside its field in cptlab.config, in one line.
RULES = [
    C(["retention=ema", "retention.every_n_steps=0"], "retention.every_n_steps=0 must be >= 1", id="ema_every_0"),
    C(["retention=mean_teacher", "retention.weight=0"], "retention.weight=0.0 must be > 0", id="teacher_weight_0"),
    C(["retention=mean_teacher", "retention.decay=0"], "retention.decay=0.0 must be in (0, 1)", id="teacher_decay_0"),
    C(["retention=mean_teacher", "retention.on=old"], "retention.on='old' must be one of replay, all, new",
      id="teacher_rows_unknown"),
    C(["data.domains.new.weight=0"], "data.domains.new.weight=0.0 must be > 0", id="domain_weight_0"),
    C(["data.domains.old.role=old"], "data.domains.old.role='old' must be one of new, replay", id="domain_role"),
    C(["data.domains.new.max_docs=0"], "data.domains.new.max_docs=0 must be >= 1", id="domain_max_docs_0"),
    C(["data.domains.new.heldout=1.5"], "data.domains.new.heldout: heldout must be a share in (0, 1)",
      id="domain_heldout_not_share_or_count"),
    C(["data.replay_ratio=1.0"], "data.replay_ratio=1.0 must be in [0, 1)", id="replay_ratio_1"),
    C(["data.on_bad_text=ignore"], "data.on_bad_text='ignore' must be one of replace, skip, error", id="bad_text"),
    C(["data.seq_len=0"], "data.seq_len=0 must be >= 1", id="seq_len_0"),
    C(["data.max_doc_bytes=0"], "data.max_doc_bytes=0 must be >= 1 (bytes; null: no cap)", id="max_doc_bytes_0"),
    C(["seed=-1"], "seed=-1 must be >= 0", id="seed_negative"),
    C(["schedule=two_stage", "schedule.stage1_steps=0"], "schedule.stage1_steps=0 must be >= 1", id="stage1_steps"),
    C(["schedule=two_stage", "schedule.stage1_rows=some"], "schedule.stage1_rows='some' must be one of new, all",
      id="stage1_rows"),
    C(["schedule.name=three_stage"], "schedule.name='three_stage' must be one of full, two_stage", id="schedule"),
    C(["adapter=lora", "adapter.r=0"], "adapter.r=0 must be >= 1", id="lora_r_0"),
    C(["adapter=lora", "adapter.alpha=0"], "adapter.alpha=0.0 must be > 0", id="lora_alpha_0"),
    C(["adapter=dora", "adapter.dropout=1.0"], "adapter.dropout=1.0 must be in [0, 1)", id="dora_dropout_1"),
    C(["adapter=lora", "adapter.target_modules=[]"], "adapter.target_modules is empty", id="lora_no_targets"),
    C(["adapter.name=ia3"], "adapter.name='ia3' must be one of none, lora, dora, block_expansion", id="adapter"),
    C(["tokenizer.init=fancy"], "tokenizer.init='fancy' must be one of random, mean, subword_mean", id="init"),
    C(["optim.grad_clip=0"], "optim.grad_clip=0.0 must be > 0 (or null: no clipping)", id="grad_clip_0"),
    C(["model.dtype=bogus"], "model.dtype='bogus' must be one of float32, bfloat16, float16", id="dtype_unknown"),
    C(["optim.schedule=linear"], "optim.schedule='linear' must be one of cosine, wsd, constant", id="lr_schedule"),
    C(["tokenizer.admit=loose"], "tokenizer.admit='loose' must be one of auto, script, strict, all", id="admit"),
    C(["tokenizer.model_type=word"], "tokenizer.model_type='word' must be one of bpe, unigram", id="model_type"),
    C(["trainer.strategy=fsdp", "trainer.fsdp_sharding=HYBRID"],
      "trainer.fsdp_sharding='HYBRID' must be one of FULL_SHARD, SHARD_GRAD_OP, NO_SHARD", id="fsdp_sharding"),
]


@pytest.fixture(scope="module")
def files(tmp_path_factory, rel):
    d = tmp_path_factory.mktemp("valid")
    return rel.write_corpus(d / "new.txt", 50, 0), rel.write_corpus(d / "old.txt", 50, 1, " old")


def overrides(files, rel, *extra):
    new, old = files
    return [a for a in rel.tiny_run(new, old, "unused", *extra) if not a.startswith("hydra.")]


@pytest.mark.parametrize("extra, fragment", CASES + RULES)
def test_late_failures_are_refused_by_validation(compose_cfg, files, rel, extra, fragment):
    cfg = compose_cfg(overrides(files, rel, *extra))
    with pytest.raises(CptlabError) as info:
        validate(cfg)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_valid_config_passes_and_warmup_covering_the_run_warns(compose_cfg, files, rel):
    cfg = compose_cfg(overrides(files, rel))
    validate(cfg)
    assert config_warnings(cfg) == []
    cfg = compose_cfg(overrides(files, rel, "optim.warmup_steps=2"))
    validate(cfg)  # legal (smoke runs do it), but said
    [warning] = config_warnings(cfg)
    assert "optim.warmup_steps=2 >= trainer.max_steps=2" in warning


def test_a_stage_after_the_last_step_is_said(compose_cfg, files, rel):
    """trainer.max_steps=2 here: a stage ending at step 5 leaves the next one unreached (legal, said once)."""
    stages = "data.stages=[{until_step: 5, replay_ratio: 0}, {replay_ratio: 0.5}]"
    cfg = compose_cfg(overrides(files, rel, stages))
    validate(cfg)
    [warning] = config_warnings(cfg)
    assert warning.startswith("data.stages[0] ends at step 5 >= trainer.max_steps=2: data.stages[1:] never run")
    cfg = compose_cfg(overrides(files, rel, "data.stages=[{until_step: 1, replay_ratio: 0}, {replay_ratio: 0.5}]"))
    assert config_warnings(cfg) == []


def test_cli_refuses_before_any_tokenizer_or_cache(cptlab_train, files, rel, tmp_path):
    new, old = files
    run_dir = tmp_path / "run"
    proc = cptlab_train(*rel.tiny_run(new, old, run_dir, "retention=ema", "retention.decay=1.5"))
    assert "retention.decay=1.5" in rel.error_line(proc)
    assert not (cptlab_train.cache_dir / "tokenizers").exists() and not (run_dir / "tokenizer").exists()


@pytest.mark.parametrize("extra", [["retention.decay=1.5", "retention.on=bogus", "retention.weight=0"],
                                   ["schedule.stage1_steps=0", "schedule.stage1_rows=some", "adapter.r=0"],
                                   ["trainer.fsdp_sharding=HYBRID"]])
def test_a_rule_applies_only_where_its_key_is_read(compose_cfg, files, rel, extra):
    """retention=none reads no retention value, schedule=full no stage1_*, adapter=none no LoRA value:
    trainer.strategy=auto no fsdp_sharding: unread values are not refused (as before the rules moved beside the
    schema)."""
    validate(compose_cfg(overrides(files, rel, *extra)))


@pytest.mark.parametrize("extra, fragment", [
    (["retention=ema", "retention.every_n_steps=0"], "retention.every_n_steps=0"),
    (["retention=mean_teacher", "retention.weight=0"], "retention.weight=0.0"),
    (["retention=mean_teacher", "retention.on=old"], "retention.on='old'"),
])
def test_cli_refuses_retention_values_before_any_cache_or_checkpoint(cptlab_train, files, rel, tmp_path, extra,
                                                                     fragment):
    """The retention keys once checked only when the trainer was built (pipeline.build_retention, MeanTeacher):
    now one line, and no tokenizer, token cache or checkpoint is written."""
    new, old = files
    run_dir = tmp_path / "run"
    proc = cptlab_train(*rel.tiny_run(new, old, run_dir, *extra))
    line = rel.error_line(proc)
    assert fragment in line
    cache = cptlab_train.cache_dir
    assert not cache.exists() or not any(cache.iterdir()), sorted(cache.rglob("*"))
    assert not (run_dir / "tokenizer").exists() and not list(run_dir.rglob("*.ckpt"))

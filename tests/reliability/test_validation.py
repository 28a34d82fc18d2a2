"""Values that libraries reject late (after the tokenizer and caches are built, after DDP ranks spawn) or with a
traceback naming no key are refused by the one validation pass, in one line naming the key."""

from __future__ import annotations

import pytest

from cptlab.errors import CptlabError
from cptlab.validate import config_warnings, validate

C = pytest.param
CASES = [
    C(["retention=ema", "retention.decay=1.5"], "retention.decay=1.5", id="ema_decay_above_1"),
    C(["retention=mean_teacher", "retention.weight=0.5", "retention.on=bogus"], "retention.on='bogus'",
      id="mean_teacher_rows_unknown"),
    C(["model.dtype=bogus"], "model.dtype='bogus'", id="dtype_unknown"),
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
]


@pytest.fixture(scope="module")
def files(tmp_path_factory, rel):
    d = tmp_path_factory.mktemp("valid")
    return rel.write_corpus(d / "new.txt", 50, 0), rel.write_corpus(d / "old.txt", 50, 1, " old")


def overrides(files, rel, *extra):
    new, old = files
    return [a for a in rel.tiny_run(new, old, "unused", *extra) if not a.startswith("hydra.")]


@pytest.mark.parametrize("extra, fragment", CASES)
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


def test_cli_refuses_before_any_tokenizer_or_cache(cptlab_train, files, rel, tmp_path):
    new, old = files
    run_dir = tmp_path / "run"
    proc = cptlab_train(*rel.tiny_run(new, old, run_dir, "retention=ema", "retention.decay=1.5"))
    assert "retention.decay=1.5" in rel.error_line(proc)
    assert not (cptlab_train.cache_dir / "tokenizers").exists() and not (run_dir / "tokenizer").exists()

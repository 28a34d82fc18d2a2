"""RunPlan.from_config: the validation returns the typed parts every build step takes, read from the config
once; build_run builds from them and from nothing else of the config's data, tokenizer and model nodes."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import open_dict

from cptlab.data.tokens import DomainSpec
from cptlab.run.plan_values import parts_of, trainer_plan_of
from cptlab.run.validate import RunPlan


def test_the_plan_holds_the_domains_sources_and_trainer_settings(compose_cfg, tmp_path):
    cfg = compose_cfg(["experiment=demo_zh", "debug=smoke", "data.domains.zh.weight=2", "trainer.max_steps=6"],
                      output_dir=tmp_path)
    plan = RunPlan.from_config(cfg)
    assert plan.parts == parts_of(cfg) and plan.trainer == trainer_plan_of(cfg)
    zh = next(spec for spec in plan.parts.data.specs if spec.name == "zh")
    assert isinstance(zh, DomainSpec) and zh.weight == 2.0 and zh.max_docs == 600  # debug=smoke's data.max_docs
    assert [spec.name for spec in plan.parts.data.of_role("eval")] == ["en_eval"]
    assert plan.parts.tokenizer.kind == "extend" and plan.parts.data.seq_len == 64
    assert plan.trainer.max_steps == 6 and plan.trainer.accelerator == "cpu"
    # The demo base is not built in the test cache: the stand-in's recipe is in the plan, its sizes under the run's.
    stand_in = plan.parts.model.stand_in
    assert stand_in is not None and stand_in.fields["hidden_size"] == 64
    assert stand_in.recipe.tokenizer.kind == "train" and [s.name for s in stand_in.recipe.data.specs] == ["en"]


def test_build_run_reads_the_parts_not_the_config(compose_cfg, tmp_path, monkeypatch):
    """A config changed after validation does not reach the data the run builds: the plan's parts do."""
    from cptlab.run import pipeline
    from cptlab.run.build import build_run

    cfg = compose_cfg(["experiment=demo_zh", "debug=smoke"], output_dir=tmp_path)
    plan = RunPlan.from_config(cfg)
    seen = {}

    def stop(data, tokenizer_dir):
        seen["specs"] = data.specs
        raise RuntimeError("stop")

    monkeypatch.setattr(pipeline, "build_data", stop)
    with open_dict(cfg):
        cfg.data.max_docs = 7  # after validation: not in the plan
    with pytest.raises(RuntimeError, match="^stop$"):
        build_run(plan, Path(tmp_path) / "run")
    assert {spec.max_docs for spec in seen["specs"]} == {600}

"""Every config composes, the schema rejects bad input by name, run directories come from overrides."""

import pytest
from hydra.errors import ConfigCompositionException

from cptlab.config import run_name
from pathlib import Path

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"

EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))


def test_there_are_experiments():
    assert {"demo_base", "demo_zh", "demo_code"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_plain_and_under_smoke(compose_cfg, experiment):
    cfg = compose_cfg([f"experiment={experiment}"])
    assert cfg.name == experiment
    smoke = compose_cfg([f"experiment={experiment}", "debug=smoke"])
    assert smoke.trainer.max_steps <= 10
    assert smoke.model.name_or_path is None and smoke.model.config.hidden_size <= 64
    assert smoke.publish_dir is None  # a smoke run never overwrites the cached demo base


def test_demo_zh_contract(compose_cfg):
    cfg = compose_cfg(["experiment=demo_zh"])
    assert dict((k, d.role) for k, d in cfg.data.domains.items()) == {"zh": "new", "en": "replay"}
    assert cfg.data.replay_ratio == 0.25
    assert cfg.model.name_or_path.endswith("demo_base")


@pytest.mark.parametrize("override, fragment", [
    ("data.replay_ratio=abc", "data.replay_ratio"),
    ("no_such_key=1", "no_such_key"),
    ("trainer.max_steps=1.5", "trainer.max_steps"),
    ("data=nope", "data/nope"),
])
def test_schema_rejects_bad_overrides(compose_cfg, override, fragment):
    with pytest.raises(ConfigCompositionException) as info:
        compose_cfg(["experiment=demo_zh", override])
    assert fragment in str(info.value) + str(info.value.__cause__)


def test_groups_reject_unknown_keys_in_domain_nodes(compose_cfg):
    with pytest.raises(ConfigCompositionException):
        compose_cfg(["+data.domains.zh.colour=red"])


def test_run_name_is_deterministic_and_filesystem_safe():
    assert run_name("") == "default"
    assert run_name("data.replay_ratio=0.5,debug=smoke") == "data.replay_ratio=0.5,debug=smoke"
    assert "/" not in run_name("model.name_or_path=/a/b")
    long = run_name("x=" + "y" * 500)
    assert len(long) <= 120 and long == run_name("x=" + "y" * 500)


def test_wandb_run_is_grouped_named_and_tagged_from_the_config(compose_cfg):
    cfg = compose_cfg(["experiment=demo_zh_lora", "logger=wandb", "tags=[ablation,v2,'adapter=lora']"])
    wandb = cfg.logger.wandb
    assert wandb.group == "demo_zh_lora"  # one group per experiment / sweep
    # the user's tags first, then the choices that tell runs apart, each once
    assert list(wandb.tags) == ["ablation", "v2", "adapter=lora", "schedule=two_stage", "retention=none",
                                "tokenizer=extend"]

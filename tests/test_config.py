"""Every config composes, the schema rejects bad input by name, run directories come from overrides."""

import re
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException

from cptlab.config import run_name

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
    # a tiny random-init model (of the base's architecture when there is a base), never the trained weights
    assert (smoke.model.name_or_path is None or smoke.model.random_init) and smoke.model.config.hidden_size <= 64
    assert smoke.publish_dir is None  # a smoke run never overwrites the cached demo base


def test_demo_zh_contract(compose_cfg):
    cfg = compose_cfg(["experiment=demo_zh"])
    assert dict((k, d.role) for k, d in cfg.data.domains.items()) == {"zh": "new", "en": "replay", "en_eval": "eval"}
    assert list(cfg.eval.harness.tasks) == ["cptlab_en_word_order", "cptlab_zh_polarity"]  # issue #25's probes
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


# -- the schema's defaults are the YAML's values ------------------------------------------------------------

# Groups whose options set keys of the node of the same name (logger holds instantiable nodes; paths only
# environment-dependent interpolations; debug and experiment are global presets).
GROUPS = ("model", "tokenizer", "data", "schedule", "adapter", "retention", "optim", "trainer")
# A documented default in a group option: a commented-out key at the top level, `# key: value  # comment`.
COMMENTED_KEY = re.compile(r"^# ([a-z_]+): ([^\s#]+)\s*(?:#.*)?$")


def flatten(node, prefix: str = "") -> dict:
    """Dotted key -> value of every leaf (lists are leaves; an empty dict is no leaf)."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: node}


def schema_defaults() -> dict:
    from omegaconf import OmegaConf

    from cptlab.config import TrainConfig

    return flatten(OmegaConf.to_container(OmegaConf.structured(TrainConfig)))


def option_values(group: str, path: Path) -> dict:
    """What a group option sets (its commented-out documented defaults included), as dotted schema keys."""
    import yaml

    node = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    node.pop("defaults", None)
    values = flatten(node, group)
    for line in path.read_text(encoding="utf-8").splitlines():
        if match := COMMENTED_KEY.match(line):
            values[f"{group}.{match.group(1)}"] = yaml.safe_load(match.group(2))
    return values


def test_option_values_reads_keys_and_commented_defaults(tmp_path):
    path = tmp_path / "opt.yaml"
    path.write_text("# Prose: not a key\ndefaults: [x]\na: 1\nb:\n  c: [1, 2]\n# d: null   # documented\n"
                    "#   e: indented comment, not a key\n")
    assert option_values("g", path) == {"g.a": 1, "g.b.c": [1, 2], "g.d": None}


def test_default_composition_equals_the_schema(compose_cfg):
    """`cptlab-train` with no override gives, key by key, what the schema's dataclasses say."""
    from omegaconf import OmegaConf

    composed = flatten(OmegaConf.to_container(compose_cfg([])))
    schema = schema_defaults()
    compared = [k for k in composed if k in schema and not k.startswith("paths.")]
    assert {"trainer.max_steps", "optim.warmup_steps", "retention.decay", "eval.every_n_steps"} <= set(compared)
    assert {k: composed[k] for k in compared} == {k: schema[k] for k in compared}


def test_primary_config_values_equal_the_schema():
    """The keys conf/train.yaml sets itself (name, seed, train, eval, checkpoint, trainer.max_steps)."""
    import yaml

    node = yaml.safe_load((CONF_DIR / "train.yaml").read_text(encoding="utf-8"))
    for key in ("defaults", "hydra"):
        node.pop(key)
    values, schema = flatten(node), schema_defaults()
    assert "trainer.max_steps" in values
    assert {k: v for k, v in values.items()} == {k: schema[k] for k in values}


@pytest.mark.parametrize("group", GROUPS)
def test_schema_default_is_the_value_every_option_agrees_on(group):
    """Where several options of a group set a key and all to the same value, that value is the schema's
    default (retention.decay, optim.warmup_steps, ...): a key composed without those options (or read from
    the schema, as library code and tests see it) must not silently differ from what the YAML documents.
    A key only one option sets is that option's business (schedule.phases, model.gguf); the one option of
    a one-option group (optim=adamw) is the default, so each of its keys counts."""
    schema = schema_defaults()
    options = sorted((CONF_DIR / group).glob("*.yaml"))
    seen: dict[str, list] = {}
    for path in options:
        for key, value in option_values(group, path).items():
            seen.setdefault(key, []).append(value)
    quorum = min(2, len(options))
    agreed = {k: vs[0] for k, vs in seen.items() if k in schema and len(vs) >= quorum and all(v == vs[0] for v in vs)}
    assert agreed, f"conf/{group}/ sets no schema key"
    assert agreed == {k: schema[k] for k in agreed}


def test_the_run_length_does_not_depend_on_the_trainer(compose_cfg):
    """max_steps is the schedule's length: trainer/*.yaml never sets it, so trainer=gpu changes no run."""
    import yaml

    for path in sorted((CONF_DIR / "trainer").glob("*.yaml")):
        assert "max_steps" not in (yaml.safe_load(path.read_text(encoding="utf-8")) or {}), path.name
    trainers = sorted(p.stem for p in (CONF_DIR / "trainer").glob("*.yaml"))
    for experiment in [None, *EXPERIMENTS]:
        base = [f"experiment={experiment}"] if experiment else []
        steps = {t: compose_cfg([*base, f"trainer={t}"]).trainer.max_steps for t in trainers}
        assert len(set(steps.values())) == 1, (experiment, steps)
    assert compose_cfg(["experiment=demo_zh", "trainer=gpu"]).trainer.max_steps == 150  # the experiment's own

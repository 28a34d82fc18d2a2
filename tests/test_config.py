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
    # float32, no exact piece count (a 600-document slice may not yield it): the schema's defaults, so smoke.yaml
    # states neither; an experiment that sets either needs it reset there
    assert (smoke.model.dtype, smoke.tokenizer.add_pieces) == ("float32", None), "reset it in conf/debug/smoke.yaml"


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
    ("data.doc_masking=maybe", "data.doc_masking"),  # a bool: not a string that reads as true
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


# -- option files state only what differs from the schema's defaults ----------------------------------------

# A default documented in a group option: a commented-out key at the top level, `# key: value  # comment`.
COMMENTED_KEY = re.compile(r"^# ([a-z_]+): ([^\s#]+)\s*(?:#.*)?$")
NO_DEFAULT = object()  # a key the schema gives no default value: a node, a `???`, below a dict[str, Any] leaf


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


def schema_default(key: str):
    """The schema's default value at a dotted key, through dict[str, Schema] entries (data.domains.NAME.role),
    or NO_DEFAULT."""
    import dataclasses
    import typing

    from omegaconf import MISSING

    from cptlab.config import TrainConfig, field_types, nested_schema

    schema, parts, i = TrainConfig, key.split("."), 0
    while True:
        fields = {f.name: f for f in dataclasses.fields(schema)}
        if parts[i] not in fields:
            return NO_DEFAULT
        hint = field_types(schema)[parts[i]]
        inner, origin = nested_schema(hint), typing.get_origin(hint)
        if origin is typing.Union:  # Optional[X]: X's origin
            origin = typing.get_origin(next(a for a in typing.get_args(hint) if a is not type(None)))
        if i == len(parts) - 1:
            if inner is not None and origin is None:
                return NO_DEFAULT  # a nested node, not a value
            fld = fields[parts[i]]
            value = fld.default if fld.default_factory is dataclasses.MISSING else fld.default_factory()
            return NO_DEFAULT if value is dataclasses.MISSING or value == MISSING else value
        if inner is None or origin is list:
            return NO_DEFAULT  # below a leaf (model.config.hidden_size) or inside a list (schedule.phases)
        i += 2 if origin is dict else 1  # a dict's entry name (the domain's) has no schema field
        if i == len(parts):
            return NO_DEFAULT  # a whole dict entry
        schema = inner


def same(value, default) -> bool:
    """`value` (as YAML reads it) composes to the schema's `default`: equal, of the same type (a YAML int stands
    for a float field's float), a bool never equal to a number."""
    if isinstance(value, bool) or isinstance(default, bool):
        return type(value) is type(default) and value == default
    if isinstance(default, float) and type(value) is int:
        return value == default
    if isinstance(default, list):
        return isinstance(value, list) and len(value) == len(default) and all(map(same, value, default))
    return type(value) is type(default) and value == default


def conf_files(conf_dir: Path) -> tuple[dict, list[str]]:
    """{name ("model/tiny", "train"): (group, {dotted schema key: value it sets}, [same-group configs it
    includes])} for every YAML of conf_dir that sets schema keys, and the group order of train.yaml's defaults
    list ("" for its _self_). A defaults entry whose place in the merge order this does not model fails."""
    import yaml

    primary = yaml.safe_load((conf_dir / "train.yaml").read_text(encoding="utf-8"))
    order = [e if isinstance(e, str) else next(iter(e)) for e in primary["defaults"]]
    order = ["" if name == "_self_" else name for name in order]
    files = {}
    for path in sorted(conf_dir.rglob("*.yaml")):
        rel = path.relative_to(conf_dir)
        group = "" if rel.parent == Path(".") else rel.parent.as_posix()
        if group.split("/")[0] == "hydra":
            continue  # hydra/launcher: Hydra's own nodes, no schema key
        assert group in order, f"{rel}: group {group} is not in train.yaml's defaults list"
        text = path.read_text(encoding="utf-8")
        node = yaml.safe_load(text) or {}
        defaults, includes = node.pop("defaults", None) or [], []
        for entry in defaults if group else ():
            if isinstance(entry, dict) and all(k.startswith("override /") for k in entry):
                continue  # another group's choice: which option merges, not where
            if isinstance(entry, dict) and all(k.startswith("/") and "@" in k for k in entry):
                continue  # another group's option at a package below this file's (stand_in/demo_base's model@model):
                # its values are checked as that group's file, and land on keys this file's own values are not under
            assert isinstance(entry, str) and entry != "_self_" and "/" not in entry and "@" not in entry \
                and " " not in entry, f"{rel}: defaults entry {entry!r} is not modelled"
            includes.append(f"{group}/{entry}")  # merged before this file (its implicit _self_ comes last)
        node.pop("hydra", None)
        package = next((line.split("@package", 1)[1].strip() for line in text.splitlines()
                        if line.startswith("# @package")), group.replace("/", "."))
        assert package in ("_global_", group.replace("/", ".")), f"{rel}: package {package} is not modelled"
        values = flatten_leaves(node, "" if package == "_global_" else package) if node else {}
        files[rel.with_suffix("").as_posix()] = (group, values, includes)
    return files, order


def flatten_leaves(node, prefix: str = "") -> dict:
    """Dotted key -> value of everything a YAML file sets: lists and empty mappings are values too."""
    if isinstance(node, dict) and node:
        out = {}
        for key, value in node.items():
            out.update(flatten_leaves(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: node}


def default_restatements(conf_dir: Path = CONF_DIR) -> dict[str, bool]:
    """{"FILE: KEY": redundant} for every value a conf YAML sets that equals the schema's default at its key.

    Redundant means: removing it leaves every composed config identical. Hydra merges the schema, then
    conf/train.yaml (its `_self_`), one option per group in train.yaml's defaults order, the experiment, then
    debug; a file's own defaults-list includes (experiment=demo_zh inside demo_zh_lora, logger=csv inside
    logger=default) before the file itself. So the files that can be merged before a file F of group G, in some
    composition, are: train.yaml, every option of every group listed before G (the command line may pick any,
    whatever an experiment's `override` chooses) and F's includes with theirs. A value of F is redundant when
    none of those sets its key (or a node above or below it) to anything but the schema's default: then in
    every composition the key holds the schema's default just before F merges, F's value changes nothing,
    and later files never see a difference. The rule errs towards keeping: an interpolation counts as another
    value, and a value that resets what an earlier file may set (debug=smoke's publish_dir: null against
    experiment=demo_base's) is needed however the compositions in use choose."""
    files, order = conf_files(conf_dir)

    def before(name: str) -> set[str]:
        group, _, includes = files[name]
        found = {n for n, (g, _, _) in files.items() if order.index(g) < order.index(group)}
        for include in includes:
            found |= {include} | before(include)
        return found

    restated = {}
    for name, (_, values, _) in files.items():
        earlier = [(k, v) for other in before(name) for k, v in files[other][1].items()]
        for key, value in values.items():
            default = schema_default(key)
            if default is NO_DEFAULT or not same(value, default):
                continue
            changed = any((k == key and not same(v, default)) or k.startswith(f"{key}.") or key.startswith(f"{k}.")
                          for k, v in earlier)
            restated[f"{name}.yaml: {key}"] = not changed
    return restated


def test_no_conf_file_restates_a_schema_default():
    """Option files (and conf/train.yaml, experiments, debug presets) state only what differs from the schema's
    defaults (cptlab/config.py): a value the schema already gives, which nothing merged earlier can have
    changed, is removed (see default_restatements for the rule)."""
    redundant = [key for key, is_redundant in default_restatements().items() if is_redundant]
    assert redundant == [], f"remove these values, the schema's defaults already (cptlab/config.py): {redundant}"


def test_the_restatement_check_flags_an_injected_default_and_keeps_a_needed_one(tmp_path, compose_cfg):
    """The check on a copy of conf/: a default added where nothing earlier sets the key is flagged (and indeed
    composes to the same config); a default that resets an earlier file's value is kept (and indeed matters);
    so are the real ones of that kind."""
    import shutil

    from omegaconf import OmegaConf

    real = default_restatements()
    assert real["debug/smoke.yaml: publish_dir"] is False  # experiment=demo_base publishes: smoke undoes it
    assert real["experiment/demo_base.yaml: tokenizer.vocab_size"] is False  # tokenizer=extend sets 8000

    conf = tmp_path / "conf"
    shutil.copytree(CONF_DIR, conf)
    for rel, anchor, added in [
        ("experiment/demo_code.yaml", "trainer:\n", "trainer:\n  accumulate_grad_batches: 1\n"),  # redundant
        ("trainer/gpu.yaml", "accelerator: gpu\n", "accelerator: gpu\nnum_threads: null\n"),  # redundant
        ("debug/smoke.yaml", "optim:\n", "optim:\n  lr: 3.0e-4\n"),  # resets every experiment's lr: needed
    ]:
        text = (conf / rel).read_text(encoding="utf-8")
        assert text.count(anchor) == 1, rel
        (conf / rel).write_text(text.replace(anchor, added), encoding="utf-8")
    redundant = [key for key, is_redundant in default_restatements(conf).items() if is_redundant]
    assert redundant == ["experiment/demo_code.yaml: trainer.accumulate_grad_batches",
                         "trainer/gpu.yaml: trainer.num_threads"]
    assert default_restatements(conf)["debug/smoke.yaml: optim.lr"] is False

    def composed(config_dir, overrides):
        return OmegaConf.to_yaml(compose_cfg(overrides, config_dir=config_dir), resolve=False)

    for overrides in (["experiment=demo_code", "trainer=gpu"], ["trainer=gpu"]):
        assert composed(conf, overrides) == composed(CONF_DIR, overrides)  # the flagged ones change nothing
    assert composed(conf, ["experiment=demo_zh", "debug=smoke"]) != composed(CONF_DIR, ["experiment=demo_zh",
                                                                                          "debug=smoke"])


def test_defaults_documented_in_comments_are_the_schemas():
    """A group option may show a default as a commented-out key (`# split_seed: 0   # ...`, data/*.yaml): the
    value it shows is the schema's."""
    import yaml

    documented = {}
    for path in sorted(CONF_DIR.glob("*/*.yaml")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if match := COMMENTED_KEY.match(line):
                documented[f"{path.parent.name}.{match.group(1)}"] = yaml.safe_load(match.group(2))
    assert "data.split_seed" in documented
    assert {k: v for k, v in documented.items() if not same(v, schema_default(k))} == {}


def test_default_composition_equals_the_schema(compose_cfg):
    """`cptlab-train` with no override gives, key by key, what the schema's dataclasses say."""
    from omegaconf import OmegaConf

    composed = flatten(OmegaConf.to_container(compose_cfg([])))
    schema = schema_defaults()
    compared = [k for k in composed if k in schema and not k.startswith("paths.")]
    assert {"trainer.max_steps", "optim.warmup_steps", "retention.decay", "eval.every_n_steps"} <= set(compared)
    assert {k: composed[k] for k in compared} == {k: schema[k] for k in compared}


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

"""The rules beside the schema's fields (cptlab.config): each allowed-values tuple is written once, every default
obeys its own rule, and one checker spells every message (tests/reliability/test_validation.py runs them on
composed configs, and through the CLI)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from cptlab import config
from cptlab.errors import CptlabError
from cptlab.run.plan_values import BUILDERS
from cptlab.run.validate import declared_values, validate_fields

PACKAGE = Path(config.__file__).resolve().parent
TUPLES = {name: value for name, value in vars(config).items()
          if name.isupper() and isinstance(value, tuple) and all(isinstance(v, str) for v in value)}


def schemas(schema=config.TrainConfig):
    """Every dataclass of the schema, nested ones included, once each."""
    seen = [schema]
    for hint in config.field_types(schema).values():
        inner = config.nested_schema(hint)
        if inner is not None and inner not in seen:
            seen += [s for s in schemas(inner) if s not in seen]
    return seen


@pytest.mark.parametrize("name", sorted(TUPLES))
def test_each_allowed_values_list_is_written_once(name):
    """The literal (as a tuple or a list) appears in cptlab.config only: other modules import it."""
    values = TUPLES[name]
    spellings = ["(" + ", ".join(f'"{v}"' for v in values) + ("," if len(values) == 1 else "") + ")",
                 "[" + ", ".join(f'"{v}"' for v in values) + "]"]
    holders = sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
                     if p.name != "config.py" and any(s in p.read_text(encoding="utf-8") for s in spellings))
    assert holders == [], f"{name} is listed again in {holders}"


@pytest.mark.parametrize("schema", schemas(), ids=lambda s: s.__name__)
def test_every_default_obeys_its_own_rule(schema):
    for f in dataclasses.fields(schema):
        rule = f.metadata.get("rule")
        if rule is not None and f.default is not dataclasses.MISSING:
            rule.check(f"{schema.__name__}.{f.name}", f.default)


@pytest.mark.parametrize("key, value, message", [
    ("retention.decay", 1.5, "retention.decay=1.5 must be in (0, 1)"),
    ("retention.decay", 0.0, "retention.decay=0.0 must be in (0, 1)"),
    ("data.replay_ratio", 1.0, "data.replay_ratio=1.0 must be in [0, 1)"),
    ("data.num_workers", -1, "data.num_workers=-1 must be >= 0"),
    ("data.domains.zh.weight", 0, "data.domains.zh.weight=0 must be > 0"),
    ("tokenizer.character_coverage", 1.01, "tokenizer.character_coverage=1.01 must be in [0.98, 1] "
                                           "(SentencePiece's range)"),
    ("retention.on", "old", "retention.on='old' must be one of replay, all, new"),
    ("model.dtype", None, "model.dtype=None must be one of float32, bfloat16, float16"),  # not Optional
    ("data.seq_len", None, "data.seq_len=None must be >= 1"),
    # values that library functions once checked themselves (they now take checked values): each message is the
    # rule's, spelled here once, for a front end's check (check_value) as for a run's (validate_fields)
    ("data.on_bad_text", "ignore", "data.on_bad_text='ignore' must be one of replace, skip, error"),
    ("data.max_doc_bytes", 0, "data.max_doc_bytes=0 must be >= 1 (bytes; null: no cap)"),
    ("optim.schedule", "linear", "optim.schedule='linear' must be one of cosine, wsd, constant"),
    ("model.dtype", "bogus", "model.dtype='bogus' must be one of float32, bfloat16, float16"),
    ("trainer.fsdp_sharding", "HYBRID", "trainer.fsdp_sharding='HYBRID' must be one of FULL_SHARD, SHARD_GRAD_OP, "
                                        "NO_SHARD"),
    ("tokenizer.kind", "pretrained", "tokenizer.kind='pretrained' must be one of base, train, extend"),
    ("tokenizer.admit", "loose", "tokenizer.admit='loose' must be one of auto, script, strict, all"),
    ("tokenizer.model_type", "word", "tokenizer.model_type='word' must be one of bpe, unigram"),
])
def test_one_checker_spells_every_message(key, value, message):
    with pytest.raises(CptlabError) as info:
        config.check_value(key, value)
    assert str(info.value) == message


def test_required_refuses_a_null_the_config_admits():
    """tokenizer.model_type's null (the base's type, or bpe) is resolved before training, which needs a type."""
    config.check_value("tokenizer.model_type", None)
    with pytest.raises(CptlabError) as info:
        config.check_value("tokenizer.model_type", None, required=True)
    assert str(info.value) == "tokenizer.model_type=None must be one of bpe, unigram"


def test_a_run_refuses_an_unknown_tokenizer_kind(compose_cfg):
    """The kind the library refuses with a ValueError (tests/tokenizer/test_prepare.py) is the run's one line."""
    with pytest.raises(CptlabError, match=r"^tokenizer\.kind='pretrained' must be one of base, train, extend$"):
        validate_fields(compose_cfg(["tokenizer.kind=pretrained"]))


def test_schema_defaults_shared_with_libraries_are_written_once():
    from cptlab.data.sources import MAX_DOC_BYTES
    from cptlab.utils import limits

    assert config.DataConfig.max_doc_bytes == MAX_DOC_BYTES == limits.MAX_DOC_BYTES


def test_admitted_values_and_nulls_pass():
    for key, value in [("retention.decay", 0.5), ("tokenizer.character_coverage", 1.0), ("data.replay_ratio", 0.0),
                       ("data.max_docs", None), ("optim.grad_clip", None), ("tokenizer.kind", "extend")]:
        config.check_value(key, value)
    with pytest.raises(KeyError, match="no rule is declared for data.domains.zh.sources"):
        config.check_value("data.domains.zh.sources", ["x"])


def test_the_pass_walks_into_every_domain(compose_cfg):
    cfg = compose_cfg(["data=files", "data.domains.new.sources=[a]", "data.domains.old.sources=[b]"])
    keys = {key for key, _, _ in declared_values(cfg, config.TrainConfig)}
    assert {"data.domains.new.weight", "data.domains.old.role", "retention.decay", "seed"} <= keys


def test_every_schedule_name_has_one_phase_builder():
    assert set(BUILDERS) == set(config.FREEZE_SCHEDULES)

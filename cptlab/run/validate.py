"""Checks on a composed config that run before any heavy work, each failing with one line that
names the key or path at fault (types and unknown keys are already caught by the schema).

The allowed values and ranges of single fields are declared beside the fields (cptlab.config) and checked by
one generic pass, `validate_fields`; this module adds the rules that relate several fields, or a field and
the files it names, each once."""

from __future__ import annotations

import dataclasses
import glob
import json
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from cptlab.config import Rule, TrainConfig, field_types, nested_schema
from cptlab.data.source_weights import resolve_source_weights
from cptlab.data.split import check_eval_sources, heldout_kind
from cptlab.data.stages import Stage
from cptlab.errors import CptlabError
from cptlab.evaluation.harness import check_harness
from cptlab.model.adapter_targets import check_targets
from cptlab.model.doc_mask import check_doc_masking
from cptlab.model.gguf import check_gguf
from cptlab.model.phases import Phase
from cptlab.model.source import check_model_source
from cptlab.run.plan_values import (
    Parts,
    TrainerPlan,
    lr_scale_of,
    parts_of,
    phases_of,
    stages_of,
    stand_in_of,
    trainer_plan_of,
)
from cptlab.rundir.layout import INPUT_KEYS
from cptlab.training.schedule import LRScale, LRSchedule
from cptlab.utils.io import check_replaceable


def validate_fields(cfg: DictConfig) -> None:
    """Every value that has a rule beside its field in cptlab.config (and is read by this config: the rule's
    `when`) against that rule; the first bad one, in schema order, fails naming its full key."""
    for key, rule, value in declared_values(cfg, TrainConfig):
        if rule.when is None or rule.when(cfg):
            rule.check(key, value)


def declared_values(node: DictConfig, schema: type, prefix: str = "") -> Iterator[tuple[str, Rule, object]]:
    """(full key, rule, value) of every field of `node` that declares a rule, nested schemas included (a domain
    of data.domains is `data.domains.NAME.FIELD`). Only those fields are read: another may be an interpolation
    that resolves only inside a Hydra run, or a mandatory value not set yet."""
    types = field_types(schema)
    for f in dataclasses.fields(schema):
        key = prefix + f.name
        if f.name not in node or OmegaConf.is_missing(node, f.name):
            continue
        if (rule := f.metadata.get("rule")) is not None:
            yield key, rule, node[f.name]
        elif (inner := nested_schema(types[f.name])) is not None and node[f.name] is not None:
            for entry_prefix, entry in _entries(key, types[f.name], node[f.name]):
                yield from declared_values(entry, inner, entry_prefix)


def _entries(key: str, hint, value) -> Iterator[tuple[str, DictConfig]]:
    """The nodes a schema-typed field holds, with their key prefixes: the node itself, each entry of a dict
    (`key.NAME.`) or each item of a list (`key[i].`)."""
    if typing.get_origin(hint) is typing.Union:  # Optional[X]: a null value was skipped by the caller
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    origin = typing.get_origin(hint)
    if origin is dict:
        yield from ((f"{key}.{name}.", entry) for name, entry in value.items())
    elif origin is list:
        yield from ((f"{key}[{i}].", entry) for i, entry in enumerate(value))
    else:
        yield f"{key}.", value


def _check_source(domain: str, source: str) -> None:
    if source.startswith(("demo:", "hf:")):
        return
    if any(ch in source for ch in "*?["):
        if not glob.glob(str(Path(source).expanduser())):
            raise CptlabError(f"data source not found: {source} (no file matches; data.domains.{domain}.sources)")
    elif not Path(source).expanduser().exists():
        raise CptlabError(f"data source not found: {source} (data.domains.{domain}.sources)")


def validate_data(data: DictConfig) -> None:
    if not data.domains:
        raise CptlabError("data.domains is empty: configure at least one domain with role 'new'")
    roles = {}
    for name, d in data.domains.items():
        if not d.sources:
            raise CptlabError(f"data.domains.{name}.sources is empty")
        try:
            heldout_kind(d.heldout)
        except CptlabError as e:
            raise CptlabError(f"data.domains.{name}.heldout: {e}") from None
        for source in d.sources:
            _check_source(name, str(source))
        resolve_source_weights(name, [str(s) for s in d.sources], d.get("source_weights"), d.role)
        roles[name] = d.role
    if "new" not in roles.values():
        raise CptlabError("data.domains has no domain with role 'new'")
    if data.replay_ratio > 0 and "replay" not in roles.values():
        raise CptlabError(f"data.replay_ratio={data.replay_ratio} but no domain has role 'replay'")
    check_eval_sources({name: (d.role, [str(s) for s in d.sources]) for name, d in data.domains.items()})


def validate_schedule_and_adapter(cfg: DictConfig) -> list[Phase]:
    """Freezing schedule and adapter settings that need no model (the model-dependent checks, e.g. a
    target module or a layer that does not exist, run when the model is built); the schedule's phases."""
    phases = phases_of(cfg.schedule)
    if cfg.adapter.name in ("lora", "dora") and not cfg.adapter.target_modules:
        raise CptlabError("adapter.target_modules is empty: name the modules to adapt (e.g. q_proj, v_proj)")
    if cfg.adapter.name == "block_expansion":
        from cptlab.model.expand import check_expansion_config

        check_expansion_config(cfg.adapter)
    if cfg.adapter.name != "none" and not any(g in ("adapter", "all") or g.startswith("layers.")
                                               for p in phases for g in p.train):
        raise CptlabError(f"adapter={cfg.adapter.name} but schedule={cfg.schedule.name} never trains the adapter "
                          f"(no phase has the group 'adapter'): use adapter=none or another schedule")
    return phases


def base_config(cfg: DictConfig, *, written_over: bool = True) -> dict:
    """The base model's config as far as it can be read before any work: a random-init model's `model.config`;
    else the base directory's config.json (a GGUF base: its converted directory, once converted), with
    `model.config` over it under `model.random_init` (the model a run builds) unless not `written_over` (the base
    itself, which a smoke run stands in for). Empty when not known yet (checked when the model loads)."""
    fields = OmegaConf.to_container(cfg.model.config, resolve=True) if cfg.model.config else {}
    path = None
    if cfg.model.gguf:
        from cptlab.model.gguf import fingerprint, locate

        full = Path(str(cfg.paths.cache_dir)).expanduser() / "gguf" / fingerprint(locate(str(cfg.model.gguf)))
        path = next((d for d in (full, full.with_name(f"{full.name}-config")) if (d / "config.json").is_file()), None)
    elif (stand_in := stand_in_of(cfg)) is not None:  # the recipe's architecture, in the base's place
        return dict(stand_in.fields) if written_over else dict(stand_in.recipe.model.fields or {})
    elif cfg.model.name_or_path:
        path = Path(str(cfg.model.name_or_path)).expanduser()
    else:
        return dict(fields)
    base = json.loads((path / "config.json").read_text(encoding="utf-8")) if path and (path / "config.json").is_file() \
        else {}
    if not base:
        return dict(fields) if cfg.model.get("random_init") else {}
    return {**base, **fields} if cfg.model.get("random_init") and written_over else base


def validate_model(cfg: DictConfig) -> None:
    """The model directory exists and parses, and data.seq_len fits its positions: read from
    config.json (or the random-init config) before any tokenizer or data work."""
    if cfg.model.gguf:  # the file and the `gguf` package are there (its positions: once converted)
        check_gguf(str(cfg.model.gguf))
    elif cfg.model.name_or_path and stand_in_of(cfg) is None:
        path = Path(str(cfg.model.name_or_path)).expanduser()
        if path.name == "demo_base" and not path.exists():
            raise CptlabError(f"the demo base model is not built yet ({path}): run `make demo` or "
                              "`cptlab-train experiment=demo_base` first")
        check_model_source(str(cfg.model.name_or_path))
    # The base's own positions: a smoke run (random_init, small sizes over the base's config) must refuse what
    # the real run would.
    limit = base_config(cfg, written_over=False).get("max_position_embeddings")
    if limit is not None and cfg.data.seq_len > limit:
        raise CptlabError(f"data.seq_len={cfg.data.seq_len} exceeds the model's maximum positions ({limit})")


def validate_doc_masking(cfg: DictConfig) -> None:
    """data.doc_masking=true only for the model types its masking was verified for: a random-init model is a
    Llama, a base directory's type is in its config.json (a hub id or an unconverted GGUF: when it loads)."""
    if not cfg.data.get("doc_masking"):
        return
    if not (cfg.model.name_or_path or cfg.model.gguf):
        check_doc_masking("llama")  # cptlab.model.load builds a LlamaForCausalLM from model.config
        return
    model_type = base_config(cfg, written_over=False).get("model_type")
    if model_type is not None:
        check_doc_masking(model_type)


def validate_adapter_targets(cfg: DictConfig) -> None:
    """adapter.target_modules name modules of the model: checked on a weightless (meta-device) copy built from
    its config, so a typo fails before the tokenizer and the token caches are built (a hub id: at load time)."""
    if cfg.adapter.name not in ("lora", "dora") or cfg.model.gguf:  # a GGUF base: checked when the converted model is built
        return
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from cptlab.model.load import random_llama_config

    if cfg.model.name_or_path:
        path = Path(str(cfg.model.name_or_path)).expanduser()
        if not (path / "config.json").is_file():
            return
        config = AutoConfig.from_pretrained(path)
    else:
        fields = OmegaConf.to_container(cfg.model.config, resolve=True)
        config = random_llama_config(fields, vocab_size=256, bos_id=None, eos_id=None)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    check_targets(skeleton, [str(t) for t in cfg.adapter.target_modules])


def validate_expansion(cfg: DictConfig) -> None:
    """adapter=block_expansion: adapter.blocks / adapter.placement fit the model's blocks (model.config's
    num_hidden_layers, else the base's config.json), before the tokenizer and the token caches are built."""
    if cfg.adapter.name != "block_expansion":
        return
    from cptlab.model.expand import insert_after

    layers = base_config(cfg).get("num_hidden_layers")
    if layers:
        insert_after(int(layers), int(cfg.adapter.blocks), cfg.adapter.placement)


def _check_extension(tok: DictConfig) -> None:
    """tokenizer.add_pieces acts only with tokenizer=extend (its value and tokenizer.admit's: their fields' rules)."""
    add_pieces = tok.get("add_pieces")
    if add_pieces is not None and tok.kind != "extend":
        raise CptlabError(f"tokenizer.add_pieces={add_pieces} only applies to tokenizer=extend (tokenizer.kind="
                          f"{tok.kind}); set tokenizer.vocab_size instead")


def validate_complete(cfg: DictConfig) -> None:
    """No mandatory value (`???`) is left unset: the first one would otherwise surface as OmegaConf's traceback
    wherever it is first read. A domain's sources (data=files asks for both the new and the replay corpus)
    say how to drop the domain instead."""
    key = next(_missing_keys(cfg), None)
    if key is None:
        return
    hint = ""
    parts = key.split(".")
    if len(parts) == 4 and parts[:2] == ["data", "domains"] and parts[3] == "sources":
        domain = cfg.data.domains[parts[2]]
        replay = domain.role == "replay" and cfg.data.replay_ratio > 0
        hint = (f": give {key}=[PATH,...], or drop the {domain.role} domain with ~data.domains.{parts[2]}"
                + (" and data.replay_ratio=0" if replay else ""))
    raise CptlabError(f"{key} is not set (??? in the config){hint}")


def _missing_keys(node, prefix: str = "") -> Iterator[str]:
    """The full keys of unset (`???`) values under `node`, in config order; interpolations are not resolved
    (OmegaConf.missing_keys resolves them, and `${hydra:...}` fails outside a Hydra job)."""
    keys = range(len(node)) if OmegaConf.is_list(node) else node.keys()
    for key in keys:
        full = f"{prefix}[{key}]" if isinstance(key, int) else f"{prefix}.{key}" if prefix else str(key)
        if OmegaConf.is_missing(node, key):
            yield full
            continue
        child = node._get_node(key)
        if OmegaConf.is_config(child) and not child._is_interpolation() and not child._is_none():
            yield from _missing_keys(child, full)


def _check_lr_scale(cfg: DictConfig, scale: LRScale) -> None:
    """optim.lr_scale.new_rows scales the rows a vocabulary extension adds; without one there are none, and the
    setting would do nothing without a word."""
    if scale.new_rows != 1.0 and cfg.tokenizer.kind != "extend":
        raise CptlabError(f"optim.lr_scale.new_rows={scale.new_rows:g} scales the new token rows, which only "
                          f"tokenizer=extend adds (tokenizer.kind={cfg.tokenizer.kind}): remove it, or extend the "
                          "vocabulary")


@dataclass(frozen=True)
class RunPlan:
    """A validated run: its config and the typed pieces its validation built, which the build uses as they are
    (cptlab.run.build.build_run) instead of building them from the config again."""
    cfg: DictConfig
    phases: tuple[Phase, ...]  # the freezing schedule (schedule.*)
    stages: tuple[Stage, ...]  # the mixture's step ranges (data.stages), in batches
    lr_schedule: LRSchedule  # optim.schedule over trainer.max_steps, re-warmed at each phase (schedule.rewarm)
    lr_scale: LRScale  # optim.lr_scale
    parts: Parts  # what the tokenizer, the data and the model are built from (domains, sources, model source)
    trainer: TrainerPlan  # the Lightning Trainer's settings

    @classmethod
    def from_config(cls, cfg: DictConfig) -> RunPlan:
        """Every check of a composed config, before any tokenizer, cache or model is built (once per run)."""
        return validate(cfg)


def validate(cfg: DictConfig) -> RunPlan:
    """Every check of a composed config, before any tokenizer, cache or model is built (run once per run); the
    plan of the run (RunPlan.from_config)."""
    validate_complete(cfg)
    validate_fields(cfg)
    if cfg.tokenizer.kind in ("base", "extend") and not (cfg.tokenizer.path or cfg.model.name_or_path or cfg.model.gguf):
        raise CptlabError(f"tokenizer={cfg.tokenizer.kind} needs tokenizer.path or model.name_or_path (a random-init "
                          "model has no tokenizer: use tokenizer=train)")
    _check_extension(cfg.tokenizer)
    if not (cfg.model.name_or_path or cfg.model.config or cfg.model.gguf):
        raise CptlabError("set model.name_or_path (a model directory), model.gguf or model.config (random init)")
    phases = validate_schedule_and_adapter(cfg)
    restarts = tuple(p.until_step for p in phases[:-1]) if cfg.schedule.rewarm else ()  # where phases 1, 2... begin
    lr_schedule = LRSchedule(total_steps=cfg.trainer.max_steps, warmup_steps=cfg.optim.warmup_steps,
                             kind=cfg.optim.schedule, min_lr_ratio=cfg.optim.min_lr_ratio,
                             decay_fraction=cfg.optim.decay_fraction, restarts=restarts)
    scale = lr_scale_of(cfg.optim.get("lr_scale"))
    _check_lr_scale(cfg, scale)
    validate_data(cfg.data)
    stages = stages_of(cfg.data, batches_per_step=int(cfg.trainer.accumulate_grad_batches))
    validate_model(cfg)
    validate_doc_masking(cfg)
    scale.check_tied(bool(base_config(cfg).get("tie_word_embeddings")))
    validate_adapter_targets(cfg)
    validate_expansion(cfg)
    validate_strategy(cfg)
    check_harness(cfg.eval.harness, strategy=cfg.trainer.strategy)
    validate_values(cfg)
    if cfg.prepare.group >= cfg.prepare.groups:  # cptlab-prepare's shard group
        raise CptlabError(f"prepare.group={cfg.prepare.group} of prepare.groups={cfg.prepare.groups}: need groups >= 1 "
                          "and 0 <= group < groups")
    if cfg.publish_dir:  # a user's directory is never wiped at the end of a run: refused before any work
        check_replaceable(str(cfg.publish_dir), "model", "publish_dir",
                          inputs={key: OmegaConf.select(cfg, key) for key in INPUT_KEYS})
    return RunPlan(cfg, tuple(phases), tuple(stages), lr_schedule, scale, parts_of(cfg), trainer_plan_of(cfg))


def validate_values(cfg: DictConfig) -> None:
    """Values the libraries would reject only after the tokenizer, caches or ranks exist (or with a traceback
    that names no key) and that no single field's rule covers: dtype, optimizer betas, batch vs. devices."""
    opt, tr = cfg.optim, cfg.trainer
    if cfg.model.get("chunked_loss") and (cfg.model.compile or tr.strategy == "fsdp"):
        # The chunked loss calls the decoder and the head itself, around the compiled (or FSDP-wrapped) model.
        raise CptlabError(f"model.chunked_loss=true does not combine with "
                          f"{'model.compile=true' if cfg.model.compile else 'trainer.strategy=fsdp'}: "
                          f"set one of them to false")
    betas = list(opt.betas)
    if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
        raise CptlabError(f"optim.betas={betas} must be two numbers in [0, 1)")
    devices = tr.devices
    world = len(devices) if OmegaConf.is_list(devices) else devices if isinstance(devices, int) and devices > 0 else None
    if world and cfg.data.batch_size % world:
        raise CptlabError(f"data.batch_size={cfg.data.batch_size} is not divisible by trainer.devices={world} "
                          "(each rank takes an equal share of every batch)")


def config_warnings(cfg: DictConfig) -> list[str]:
    """Settings that are legal but most likely not meant (printed once, the run goes on)."""
    out = []
    if cfg.optim.warmup_steps >= cfg.trainer.max_steps:
        out.append(f"optim.warmup_steps={cfg.optim.warmup_steps} >= trainer.max_steps={cfg.trainer.max_steps}: the "
                   "learning rate never reaches optim.lr (the whole run is warm-up)")
    out += _unreached_stages(cfg)
    return out


def _unreached_stages(cfg: DictConfig) -> list[str]:
    """data.stages after one that ends at or past trainer.max_steps never run: legal (a run may be extended), said."""
    stages = cfg.data.get("stages") or []
    per_step = int(cfg.data.batch_size) * int(cfg.data.seq_len) * int(cfg.trainer.accumulate_grad_batches)
    for i, stage in enumerate(stages[:-1]):
        end = stage.get("until_step")
        if end is None and stage.get("until_tokens") is not None:
            end = int(stage.until_tokens) // per_step
        if end is not None and int(end) >= cfg.trainer.max_steps:
            return [f"data.stages[{i}] ends at step {int(end)} >= trainer.max_steps={cfg.trainer.max_steps}: "
                    f"data.stages[{i + 1}:] never run{'' if i + 2 == len(stages) else ' (any of them)'}"]
    return []


def validate_strategy(cfg: DictConfig) -> None:
    """What trainer.strategy=fsdp cannot do yet, said before any model is built."""
    tr = cfg.trainer
    if tr.strategy != "fsdp":
        return
    if cfg.retention.name != "none":
        raise CptlabError(f"retention={cfg.retention.name} keeps an average of the weights, which FSDP shards: "
                          f"use trainer=ddp with retention, or retention=none with trainer=fsdp")

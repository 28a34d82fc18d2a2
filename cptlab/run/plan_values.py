"""The config's nodes read into the plain values the libraries take (issue #28: no library module reads a config
node). Each function reads one node (`data`, `schedule`, `optim.lr_scale`, `adapter`; a DictConfig or anything
with the same attributes), checks what only the node can tell (a missing or misplaced key, an end not a whole
number of steps), and builds the library's own objects: `Stage` (cptlab.data.stages), `Phase`
(cptlab.model.phases), `LRScale` (cptlab.training.schedule) and `FreezePlan` (cptlab.model.freeze, which alone
loads torch: imported when called); `stand_in_of` reads `stand_in`, the recipe a smoke run runs in place of a base
not built yet. Each refuses in one line naming the key at fault."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import OmegaConf, open_dict

from cptlab.data.source_weights import resolve_source_weights
from cptlab.data.stages import Stage
from cptlab.data.tokens import DomainSpec
from cptlab.errors import CptlabError
from cptlab.model.phases import Phase, check_phases
from cptlab.training.schedule import LR_GROUPS, LRScale
from cptlab.utils.limits import MAX_DOC_BYTES

if TYPE_CHECKING:
    import torch

    from cptlab.model.freeze import FreezePlan


# -- data.stages --------------------------------------------------------------------------------------


def stages_of(data, *, batches_per_step: int = 1) -> list[Stage]:
    """The `data.stages` of a config (its `data` node) in global batches, checked before any work: one line naming
    the key for an end that is missing (only the last stage may run to the end), not increasing, or not a whole
    number of steps (`until_tokens`), an unknown or untrained domain in `weights`, a weight <= 0, a ratio outside
    [0, 1) or a replay ratio > 0 without a replay domain. `batches_per_step`: trainer.accumulate_grad_batches
    (`until_step` counts optimizer steps, a Stage's `until` global batches)."""
    entries = list(data.get("stages") or ())
    roles = {str(name): d.role for name, d in data.domains.items()}
    trained = [name for name, role in roles.items() if role != "eval"]
    tokens_per_batch = int(data.batch_size) * int(data.seq_len)
    out, previous = [], 0  # previous: the end of the stage before, in optimizer steps
    for k, entry in enumerate(entries):
        key = f"data.stages[{k}]"
        until_step, until_tokens = entry.get("until_step"), entry.get("until_tokens")
        if until_step is not None and until_tokens is not None:
            raise CptlabError(f"{key}: set until_step or until_tokens, not both")
        if until_tokens is not None:
            per_step = tokens_per_batch * batches_per_step
            if int(until_tokens) < 1 or int(until_tokens) % per_step:
                accumulate = f" x trainer.accumulate_grad_batches={batches_per_step}" if batches_per_step > 1 else ""
                raise CptlabError(f"{key}.until_tokens={until_tokens} is not a positive multiple of the tokens per "
                                  f"step, {per_step} (data.batch_size={data.batch_size} x data.seq_len={data.seq_len}"
                                  f"{accumulate})")
            end, field = int(until_tokens) // per_step, f"until_tokens={until_tokens}"
        elif until_step is not None:
            end, field = int(until_step), f"until_step={until_step}"
        elif k < len(entries) - 1:
            raise CptlabError(f"{key} has no until_step (or until_tokens): only the last stage may run to the end")
        else:
            end, field = None, ""
        if end is not None and end <= previous:
            raise CptlabError(f"{key}.{field} ends at step {end}, not after "
                              + (f"data.stages[{k - 1}] (step {previous})" if k else "step 0")
                              + ": stage ends must be increasing")
        ratio = entry.get("replay_ratio")
        if ratio is not None and not 0.0 <= float(ratio) < 1.0:
            raise CptlabError(f"{key}.replay_ratio={ratio!r} must be in [0, 1)")
        if ratio is not None and ratio > 0 and "replay" not in roles.values():
            raise CptlabError(f"{key}.replay_ratio={ratio} but no domain has role 'replay'")
        weights = dict(entry.get("weights") or {})
        for name, weight in weights.items():
            if name not in trained:
                why = "an eval domain is never trained on" if name in roles else f"trained: {', '.join(trained)}"
                raise CptlabError(f"{key}.weights.{name}: no trained domain of that name ({why})")
            if not float(weight) > 0:
                raise CptlabError(f"{key}.weights.{name}={weight!r} must be > 0")
        out.append(Stage(until=None if end is None else end * batches_per_step,
                         replay_ratio=None if ratio is None else float(ratio),
                         weights={str(n): float(w) for n, w in weights.items()} or None, key=key))
        previous = end if end is not None else previous
    return out


# -- schedule (the freezing phases) -------------------------------------------------------------------


def _two_stage(schedule) -> list[Phase]:
    stage1 = ("new_rows",) if schedule.stage1_rows == "new" else ("embeddings", "lm_head")
    return [Phase(int(schedule.stage1_steps), stage1), Phase(None, ("adapter",))]


def _own_phases(schedule) -> list[Phase]:
    own = getattr(schedule, "phases", None)
    if not own:
        raise CptlabError("schedule=phases needs schedule.phases: a list of {until_step, train} entries")
    return [Phase(None if p.until_step is None else int(p.until_step), tuple(str(g) for g in p.train)) for p in own]


# One builder per name of the schema's FREEZE_SCHEDULES (the schema's rule admits no other name, and
# stage1_steps / stage1_rows only in range: the builders take the values as given).
BUILDERS = {
    "full": lambda schedule: [Phase(None, ("adapter",))],
    "two_stage": _two_stage,
    "new_tokens_only": lambda schedule: [Phase(None, ("new_rows",))],
    "phases": _own_phases,
}


def phases_of(schedule) -> list[Phase]:
    """The phase list of a validated `schedule` config node. What this still refuses is a `schedule.phases` set
    for another preset, and how the phases fit together (each phase's groups, increasing steps: check_phases)."""
    if schedule.name != "phases" and getattr(schedule, "phases", None):
        raise CptlabError(f"schedule.phases is only read by schedule=phases (schedule={schedule.name}): "
                          f"use schedule=phases to write your own phases")
    phases = BUILDERS[schedule.name](schedule)
    check_phases(phases)
    return phases


def train_new_tokens_of(adapter) -> bool:
    """`adapter.train_new_tokens` (False when the adapter node has no such key, or there is no node)."""
    return bool(getattr(adapter, "train_new_tokens", False)) if adapter is not None else False


def freeze_plan(model: torch.nn.Module, schedule, adapter) -> FreezePlan:
    """The `schedule` node's phases resolved against `model`, with the `adapter` node's train_new_tokens (a run
    already validated: its phases are built as they are, and FreezePlan checks how they fit together)."""
    from cptlab.model.freeze import FreezePlan

    return FreezePlan(model, BUILDERS[schedule.name](schedule), train_new_tokens=train_new_tokens_of(adapter))


# -- optim.lr_scale -----------------------------------------------------------------------------------


def lr_scale_of(node) -> LRScale:
    """From the `optim.lr_scale` node (a mapping or None); unknown keys fail naming them, values are LRScale's to
    check."""
    if node is None:
        return LRScale()
    values = dict(node.items()) if hasattr(node, "items") else dict(node)
    unknown = sorted(set(values) - set(LR_GROUPS))
    if unknown:
        raise CptlabError(f"optim.lr_scale.{unknown[0]} is not a group (groups: {', '.join(LR_GROUPS)})")
    return LRScale(**values)


# -- the build's parts: data, tokenizer, model -----------------------------------------------------------


@dataclass(frozen=True)
class DataPlan:
    """The run's corpora as the builders take them: each domain's DomainSpec and how its documents are read, split
    and cached (data.*, tokenizer.max_train_bytes: how much of each train split tokenizer training reads)."""
    specs: tuple[DomainSpec, ...]
    split_seed: int
    on_bad_text: str
    num_proc: int
    seq_len: int
    doc_masking: bool
    cache_dir: Path
    max_train_bytes: int | None = None

    def of_role(self, role: str | None) -> list[DomainSpec]:
        return [spec for spec in self.specs if role is None or spec.role == role]


@dataclass(frozen=True)
class TokenizerPlan:
    """The tokenizer node (tokenizer.*) as the builders take it."""
    kind: str
    path: str | None
    vocab_size: int
    add_pieces: int | None
    admit: str
    model_type: str | None
    character_coverage: float
    init: str
    pad_to_multiple_of: int | None


@dataclass(frozen=True)
class ModelPlan:
    """What the base model is built from (model.*): a directory or hub id, a GGUF (converted once into the cache),
    or a random-init Llama from `fields`; a stand-in (the config's `stand_in`) in a base's place."""
    name_or_path: str | None
    gguf: str | None
    fields: dict | None  # model.config
    dtype: str
    random_init: bool
    gradient_checkpointing: bool
    compile: bool
    cache_dir: Path
    stand_in: StandIn | None = None


@dataclass(frozen=True)
class Parts:
    """The typed parts a run's tokenizer, data and model are built from (cptlab.run.pipeline), read from a config
    by `parts_of`; a validated run's RunPlan carries the same three."""
    tokenizer: TokenizerPlan
    data: DataPlan
    model: ModelPlan
    seed: int


@dataclass(frozen=True)
class TrainerPlan:
    """The Lightning Trainer's settings (trainer.*, optim.grad_clip, checkpoint.every_n_steps)."""
    accelerator: str
    devices: Any
    strategy: str
    precision: Any
    max_steps: int
    accumulate_grad_batches: int
    grad_clip: float | None
    fsdp_sharding: str
    log_every_n_steps: int
    checkpoint_every_n_steps: int | None
    num_threads: int | None
    num_workers: int


def trainer_plan_of(cfg) -> TrainerPlan:
    tr = cfg.trainer
    devices = OmegaConf.to_container(tr.devices) if OmegaConf.is_list(tr.devices) else tr.devices
    return TrainerPlan(accelerator=str(tr.accelerator), devices=devices, strategy=str(tr.strategy),
                       precision=tr.precision, max_steps=int(tr.max_steps),
                       accumulate_grad_batches=int(tr.accumulate_grad_batches), grad_clip=cfg.optim.grad_clip,
                       fsdp_sharding=str(tr.fsdp_sharding), log_every_n_steps=int(tr.log_every_n_steps),
                       checkpoint_every_n_steps=cfg.checkpoint.every_n_steps, num_threads=tr.num_threads,
                       num_workers=int(cfg.data.num_workers))


def domains_of(data) -> tuple[DomainSpec, ...]:
    """data.domains as DomainSpecs (a domain's max_docs capped by data.max_docs, its source weights resolved)."""
    specs = []
    for name, d in data.domains.items():
        caps = [c for c in (d.max_docs, data.max_docs) if c is not None]
        sources = tuple(str(s) for s in d.sources)
        specs.append(DomainSpec(name=str(name), role=d.role, sources=sources,
                                heldout=d.heldout if d.heldout < 1 else int(d.heldout), weight=d.weight,
                                max_docs=min(caps) if caps else None, text_field=d.text_field,
                                max_doc_bytes=data.get("max_doc_bytes", MAX_DOC_BYTES),
                                source_weights=resolve_source_weights(name, sources, d.get("source_weights"), d.role)))
    return tuple(specs)


def data_plan_of(cfg) -> DataPlan:
    data = cfg.data
    return DataPlan(specs=domains_of(data), split_seed=int(data.split_seed), on_bad_text=str(data.on_bad_text),
                    num_proc=int(data.num_proc), seq_len=int(data.seq_len), doc_masking=bool(data.get("doc_masking")),
                    cache_dir=Path(str(cfg.paths.cache_dir)), max_train_bytes=cfg.tokenizer.get("max_train_bytes"))


def tokenizer_plan_of(tok) -> TokenizerPlan:
    return TokenizerPlan(kind=str(tok.kind), path=tok.path, vocab_size=int(tok.vocab_size),
                         add_pieces=tok.get("add_pieces"), admit=str(tok.get("admit", "auto")),
                         model_type=tok.model_type, character_coverage=float(tok.character_coverage),
                         init=str(tok.init), pad_to_multiple_of=tok.pad_to_multiple_of)


def model_plan_of(cfg) -> ModelPlan:
    model = cfg.model
    return ModelPlan(name_or_path=model.name_or_path, gguf=model.gguf,
                     fields=OmegaConf.to_container(model.config, resolve=True) if model.config else None,
                     dtype=str(model.dtype), random_init=bool(model.random_init),
                     gradient_checkpointing=bool(model.gradient_checkpointing), compile=bool(model.compile),
                     cache_dir=Path(str(cfg.paths.cache_dir)), stand_in=stand_in_of(cfg))


def parts_of(cfg) -> Parts:
    """The tokenizer, data and model parts of a composed config (without validating it: RunPlan.from_config
    does, and holds the same parts)."""
    return Parts(tokenizer_plan_of(cfg.tokenizer), data_plan_of(cfg), model_plan_of(cfg), int(cfg.seed))


# -- stand_in -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StandIn:
    """A base's recipe in the base's place (the config's `stand_in`): the parts its tokenizer is built from (its
    tokenizer and data: the base's own run's cache entry), and `fields`, the recipe's model config with the run's
    model.config written over it."""
    recipe: Parts
    fields: dict


def stand_in_of(cfg) -> StandIn | None:
    """The config's `stand_in` when it applies: a random-init run of model.name_or_path = stand_in.name_or_path
    while that holds no config.json (the demo base under debug=smoke on a fresh machine); else None."""
    node, model = cfg.get("stand_in"), cfg.model
    if node is None or not (model.random_init and model.name_or_path and not model.gguf):
        return None
    base = Path(str(node.name_or_path)).expanduser()
    if Path(str(model.name_or_path)).expanduser() != base or (base / "config.json").is_file():
        return None
    recipe = copy.deepcopy(cfg)
    with open_dict(recipe):
        recipe.model, recipe.tokenizer, recipe.data, recipe.stand_in = node.model, node.tokenizer, node.data, None
    fields = OmegaConf.to_container(node.model.config, resolve=True) if node.model.config else {}
    own = OmegaConf.to_container(model.config, resolve=True) if model.config else {}
    return StandIn(parts_of(recipe), {**fields, **own})

"""The one place that decides what trains: freezing schedules as phases of parameter groups.

A schedule is a list of phases; phase i is in effect for optimizer steps `until_step[i-1] <= step <
until_step[i]` (the last phase has `until_step: null`), so the phase is a pure function of the step.
Each phase trains a union of groups:

    new_rows      rows >= base_rows of the input embedding and the output matrix (the tokens added by
                  vocabulary extension), nothing else of those matrices
    embeddings    the input embedding matrix (all rows)
    lm_head       the output matrix (all rows; the same matrix as `embeddings` when they are tied)
    layers.N      every parameter of transformer block N (`layers.A-B`: blocks A..B inclusive)
    norms         every normalisation layer's parameters (RMSNorm / LayerNorm, the final norm included)
    adapter       what the adapter config trains: the adapter's weights (LoRA/DoRA) or the new blocks
                  (block_expansion; `layers.N` then counts the expanded model's blocks) (+ `new_rows` when
                  adapter.train_new_tokens); the whole model with adapter=none
    all           every parameter

The presets are phase lists: `full` = [adapter]; `two_stage` = [embedding rows for stage1_steps, then
adapter]; `new_tokens_only` = [new_rows]; `phases` reads `schedule.phases` from the config.

A trainable set maps parameter names (as `model.named_parameters()` yields them, tied weights once) to
the first trainable row: 0 = the whole parameter, r > 0 = rows [r, n) only (a row-masked matrix; see
`cptlab.training.optim.RowMaskedAdamW` for how the other rows stay bitwise unchanged).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from cptlab.errors import CptlabError

GROUPS_HELP = "new_rows, embeddings, lm_head, layers.N, layers.A-B, norms, adapter, all"
_SIMPLE_GROUPS = ("new_rows", "embeddings", "lm_head", "norms", "adapter", "all")
_LAYERS = re.compile(r"^layers\.(\d+)(?:-(\d+))?$")
_LAYER_OF_PARAM = re.compile(r"(?:^|\.)layers\.(\d+)\.")

# Attributes recorded on the model object (forwarded through peft's wrappers by attribute lookup).
BASE_ROWS_ATTR = "_cptlab_base_rows"
ADAPTER_PARAMS_ATTR = "_cptlab_adapter_params"
TRAINABLE_ATTR = "_cptlab_trainable"


@dataclass(frozen=True)
class Phase:
    until_step: int | None
    train: tuple[str, ...]


# -- config -> phases ---------------------------------------------------------------------------------


def check_group(name: str) -> None:
    """A group name's syntax (model-independent); unknown names fail naming the value."""
    if name in _SIMPLE_GROUPS:
        return
    m = _LAYERS.match(name)
    if m:
        lo, hi = int(m.group(1)), int(m.group(2) if m.group(2) is not None else m.group(1))
        if hi < lo:
            raise CptlabError(f"schedule group {name!r}: the range is empty (write layers.A-B with A <= B)")
        return
    raise CptlabError(f"schedule group {name!r} is unknown (groups: {GROUPS_HELP})")


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


def phases_from_config(schedule) -> list[Phase]:
    """The phase list of a validated `schedule` config node (a DictConfig or anything with the same attributes).
    What this still refuses is how the phases fit together (each phase's groups, increasing steps)."""
    if schedule.name != "phases" and getattr(schedule, "phases", None):
        raise CptlabError(f"schedule.phases is only read by schedule=phases (schedule={schedule.name}): "
                          f"use schedule=phases to write your own phases")
    phases = BUILDERS[schedule.name](schedule)
    check_phases(phases)
    return phases


def check_phases(phases: list[Phase]) -> None:
    previous = 0
    for i, phase in enumerate(phases):
        if not phase.train:
            raise CptlabError(f"schedule.phases[{i}].train is empty: name the groups it trains ({GROUPS_HELP})")
        for group in phase.train:
            check_group(group)
        last = i == len(phases) - 1
        if phase.until_step is None and not last:
            raise CptlabError(f"schedule.phases[{i}].until_step is null but it is not the last phase")
        if phase.until_step is not None:
            if last:
                raise CptlabError(f"schedule.phases[{i}].until_step={phase.until_step}: the last phase must have "
                                  f"until_step: null (it lasts to the end of the run)")
            if phase.until_step <= previous:
                raise CptlabError(f"schedule.phases[{i}].until_step={phase.until_step} must be > {previous} "
                                  f"(phases end at increasing steps)")
            previous = phase.until_step


# -- model bookkeeping --------------------------------------------------------------------------------


def set_base_rows(model: torch.nn.Module, base_rows: int) -> None:
    setattr(model, BASE_ROWS_ATTR, int(base_rows))


def base_rows_of(model: torch.nn.Module) -> int:
    """Embedding rows of the model before vocabulary growth (rows >= this are new tokens)."""
    rows = getattr(model, BASE_ROWS_ATTR, None)
    return int(rows) if rows is not None else model.get_input_embeddings().weight.shape[0]


def adapter_params_of(model: torch.nn.Module) -> frozenset[str] | None:
    """Names of the adapter's own parameters, or None when the model has no adapter."""
    return getattr(model, ADAPTER_PARAMS_ATTR, None)


def clean_name(name: str) -> str:
    """A parameter name without the wrapper segments FSDP (and activation checkpointing) insert."""
    return name.replace("_fsdp_wrapped_module.", "").replace("_checkpoint_wrapped_module.", "")


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters, each counted once (tied matrices, peft's wrapped base layers).
    Of a row-masked matrix only the trainable rows count as trainable."""
    recorded = getattr(model, TRAINABLE_ATTR, None)
    trainable = total = 0
    for name, p in model.named_parameters():
        total += p.numel()
        name = clean_name(name)
        if recorded is not None:
            if name in recorded:
                start = recorded[name]
                trainable += p.numel() if start == 0 else (p.shape[0] - start) * p[0].numel()
        elif p.requires_grad:
            trainable += p.numel()
    return trainable, total


# -- the plan -----------------------------------------------------------------------------------------


class FreezePlan:
    """The phases of a run resolved against one model: which parameters (and rows) train in each."""

    def __init__(self, model: torch.nn.Module, phases: list[Phase], *, train_new_tokens: bool = False,
                 base_rows: int | None = None):
        check_phases(phases)
        self.model = model
        self.phases = list(phases)
        self.train_new_tokens = train_new_tokens
        self.base_rows = base_rows_of(model) if base_rows is None else int(base_rows)
        self.params = dict(model.named_parameters())
        self._names = {id(p): n for n, p in self.params.items()}
        self.sets = [self._resolve(i, phase) for i, phase in enumerate(self.phases)]
        self.union = self._union(self.sets)
        adapter = adapter_params_of(model)
        if adapter is not None and not any(n in adapter for n in self.union):
            raise CptlabError("the adapter's weights train in no schedule phase: add the group 'adapter' to a "
                              "phase, or use adapter=none")

    @classmethod
    def from_config(cls, model: torch.nn.Module, schedule=None, adapter=None) -> "FreezePlan":
        # The constructor checks how the phases fit together (validation checked the config's own phases once).
        phases = BUILDERS[schedule.name](schedule) if schedule is not None else [Phase(None, ("adapter",))]
        train_new = bool(getattr(adapter, "train_new_tokens", False)) if adapter is not None else False
        return cls(model, phases, train_new_tokens=train_new)

    # phases as a function of the step

    def phase_at(self, step: int) -> int:
        for i, phase in enumerate(self.phases):
            if phase.until_step is None or step < phase.until_step:
                return i
        return len(self.phases) - 1

    @property
    def stage_starts(self) -> tuple[int, ...]:
        """The steps at which phases 1, 2, ... begin."""
        return tuple(p.until_step for p in self.phases[:-1])

    # resolution

    def _matrix(self, which: str) -> str | None:
        layer = self.model.get_input_embeddings() if which == "in" else self.model.get_output_embeddings()
        weight = getattr(layer, "weight", None)
        return self._names.get(id(weight)) if weight is not None else None

    def _new_rows(self, out: dict[str, int]) -> None:
        for which in ("in", "out"):
            name = self._matrix(which)
            if name is not None and self.base_rows < self.params[name].shape[0]:
                out.setdefault(name, self.base_rows)

    def _resolve(self, index: int, phase: Phase) -> dict[str, int]:
        whole: set[str] = set()
        rows: dict[str, int] = {}
        n_layers = 1 + max((int(m.group(1)) for n in self.params if (m := _LAYER_OF_PARAM.search(n))), default=-1)
        for group in phase.train:
            if group == "all":
                whole.update(self.params)
            elif group == "adapter":
                adapter = adapter_params_of(self.model)
                if adapter is None:
                    whole.update(self.params)
                else:
                    whole.update(n for n in self.params if n in adapter)
                    if self.train_new_tokens:
                        self._new_rows(rows)
            elif group == "new_rows":
                self._new_rows(rows)
            elif group in ("embeddings", "lm_head"):
                name = self._matrix("in" if group == "embeddings" else "out")
                if name is None:
                    raise CptlabError(f"schedule group {group!r}: the model has no such matrix")
                whole.add(name)
            elif group == "norms":
                for module in self.model.modules():
                    if "norm" in type(module).__name__.lower():
                        for p in module.parameters(recurse=False):
                            if id(p) in self._names:
                                whole.add(self._names[id(p)])
            else:
                m = _LAYERS.match(group)
                lo, hi = int(m.group(1)), int(m.group(2) if m.group(2) is not None else m.group(1))
                if hi >= n_layers:
                    raise CptlabError(f"schedule group {group!r}: the model has {n_layers} layers "
                                      f"(layers.0-{n_layers - 1})")
                for n in self.params:
                    pm = _LAYER_OF_PARAM.search(n)
                    if pm and lo <= int(pm.group(1)) <= hi:
                        whole.add(n)
        out = {n: 0 for n in whole}
        for n, start in rows.items():
            out.setdefault(n, start)
        if not out:
            why = ""
            if "new_rows" in phase.train or (self.train_new_tokens and "adapter" in phase.train):
                why = (f" (the model has no new token rows: its {self.base_rows} embedding rows all come from the "
                       f"base): extend the tokenizer (tokenizer=extend), or train whole matrices (with "
                       f"schedule=two_stage: schedule.stage1_rows=all)")
            raise CptlabError(f"schedule phase {index} ({', '.join(phase.train)}) trains nothing{why}")
        # Keep named_parameters order: optimizer groups and checkpoints are built from it.
        return {n: out[n] for n in self.params if n in out}

    @staticmethod
    def _union(sets: list[dict[str, int]]) -> dict[str, int]:
        union: dict[str, int] = {}
        for s in sets:
            for n, start in s.items():
                union[n] = min(start, union.get(n, start))
        return union

    def trainable(self, phase: int) -> dict[str, int]:
        return self.sets[phase]

    def trained_until(self, phase: int) -> dict[str, int]:
        """Everything that can differ from the base after phases 0..phase (what a checkpoint must hold)."""
        return self._union(self.sets[:phase + 1])

    def apply(self, phase: int, *, keep_requires_grad: bool = False) -> dict[str, int]:
        """Set requires_grad for `phase`. With keep_requires_grad (multi-process training: DDP registers the
        parameters that require grad once), every parameter trainable in some phase keeps requires_grad and
        the caller drops the gradients of the ones not training now."""
        active = self.sets[phase]
        for name, p in self.params.items():
            p.requires_grad_(name in (self.union if keep_requires_grad else active))
        setattr(self.model, TRAINABLE_ATTR, dict(active))
        return active

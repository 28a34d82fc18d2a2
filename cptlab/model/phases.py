"""Freezing schedules as phases of parameter groups: the config's description, pure Python, no torch (the
config's validation reads it before torch loads; cptlab.model.freeze resolves the phases against a model).

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
adapter]; `new_tokens_only` = [new_rows]; `phases` = the config's own `schedule.phases` (the run reads
the node into phases: cptlab.run.plan_values).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cptlab.errors import CptlabError

GROUPS_HELP = "new_rows, embeddings, lm_head, layers.N, layers.A-B, norms, adapter, all"
_SIMPLE_GROUPS = ("new_rows", "embeddings", "lm_head", "norms", "adapter", "all")
_LAYERS = re.compile(r"^layers\.(\d+)(?:-(\d+))?$")


@dataclass(frozen=True)
class Phase:
    until_step: int | None
    train: tuple[str, ...]


def layer_range(name: str) -> tuple[int, int] | None:
    """The blocks (first, last, inclusive) a `layers.N` / `layers.A-B` group names; None for any other name."""
    m = _LAYERS.match(name)
    if m is None:
        return None
    return int(m.group(1)), int(m.group(2) if m.group(2) is not None else m.group(1))


def check_group(name: str) -> None:
    """A group name's syntax (model-independent); unknown names fail naming the value."""
    if name in _SIMPLE_GROUPS:
        return
    layers = layer_range(name)
    if layers is not None:
        lo, hi = layers
        if hi < lo:
            raise CptlabError(f"schedule group {name!r}: the range is empty (write layers.A-B with A <= B)")
        return
    raise CptlabError(f"schedule group {name!r} is unknown (groups: {GROUPS_HELP})")


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

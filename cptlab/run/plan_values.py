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

from cptlab.data.stages import Stage
from cptlab.errors import CptlabError
from cptlab.model.phases import Phase, check_phases
from cptlab.training.schedule import LR_GROUPS, LRScale

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


# -- stand_in -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StandIn:
    """A base's recipe in the base's place (the config's `stand_in`): `recipe`, the run's config with the recipe's
    model, tokenizer and data (what the stand-in's tokenizer is built from, the base's own run's cache entry), and
    `fields`, the recipe's model config with the run's model.config written over it."""
    recipe: Any
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
    return StandIn(recipe, {**fields, **own})

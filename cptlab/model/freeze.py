"""The one place that decides what trains: the freezing schedule's phases (cptlab.model.phases: the
groups each phase trains and when) resolved against one model.

A trainable set maps parameter names (as `model.named_parameters()` yields them, tied weights once) to
the first trainable row: 0 = the whole parameter, r > 0 = rows [r, n) only (a row-masked matrix; see
`cptlab.training.optim.RowMaskedAdamW` for how the other rows stay bitwise unchanged).
"""

from __future__ import annotations

import re

import torch

from cptlab.errors import CptlabError
from cptlab.model.phases import Phase, check_phases, layer_range

_LAYER_OF_PARAM = re.compile(r"(?:^|\.)layers\.(\d+)\.")

# Attributes recorded on the model object (forwarded through peft's wrappers by attribute lookup).
BASE_ROWS_ATTR = "_cptlab_base_rows"
ADAPTER_PARAMS_ATTR = "_cptlab_adapter_params"
TRAINABLE_ATTR = "_cptlab_trainable"


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
                lo, hi = layer_range(group)
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

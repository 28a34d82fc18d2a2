"""Mixture stages: the share of every global batch each domain gets, one step range after another.

`data.stages` is a list of `{until_step | until_tokens, replay_ratio, weights}`; a stage is in force for the steps
before its end and after the previous stage's, and what it leaves null is the default (`data.replay_ratio`, each
domain's `weight`). After the last stage's end (if it has one) the defaults are in force. A run without stages is
one stage of the defaults from step 0 on: the stream of a run without stages is the stream it always was.

Within a stage the rows are apportioned as in an unstaged run (cptlab.data.apportion.RowSchedule): each domain
gets floor or ceil of share * batch_size rows per batch, with the fractional parts carried from the stage's own
first batch, so its cumulative count inside the stage stays within one row of exact. The rows a domain drew before
a stage starts are summed once per stage (O(stages), not O(steps)): a domain's block cursor simply continues
across stages, and the stream stays a pure function of (seed, step).

With `data.temperature = T`, a domain's weight within its role is `weight * train_tokens ** (1 / T)`
(T = 1: in proportion to size, large T: towards the configured weights alone, T < 1: sharper than size).

Steps here are global batches (the sampler's `step`); the config's `until_step` counts optimizer steps, which
the run (`cptlab.run.plan_values.stages_of`) multiplies by `trainer.accumulate_grad_batches`.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction

from cptlab.data.apportion import RowSchedule
from cptlab.errors import CptlabError

# Shares are turned into exact fractions so that 0.3 means 3/10 and per-batch rounding can be carried exactly.
MAX_DENOMINATOR = 10_000
DEFAULTS = "data"  # the key of the stage made of the defaults (no data.stages entry)


def exact(x: float) -> Fraction:
    """A configured ratio or weight as the exact fraction the schedule works with (0.3 is 3/10)."""
    return Fraction(x).limit_denominator(MAX_DENOMINATOR)


@dataclass(frozen=True)
class Stage:
    """One configured stage, in global batches: in force before batch `until` (None: to the end). A null
    `replay_ratio` or `weights` (or a domain left out of `weights`) takes the default. `key` names the stage in
    messages ("data.stages[1]")."""

    until: int | None = None
    replay_ratio: float | None = None
    weights: Mapping[str, float] | None = None
    key: str = DEFAULTS


@dataclass(frozen=True)
class ResolvedStage:
    """A stage with its exact shares: batches [start, until) (until None: to the end), `shares` per domain in the
    sampler's order, summing to 1."""

    start: int
    until: int | None
    ratio: Fraction
    shares: tuple[Fraction, ...]
    key: str


def resolve_stages(domains: Sequence, replay_ratio: float, stages: Sequence[Stage] = (),
                   temperature: float | None = None) -> list[ResolvedStage]:
    """The stages in force, each with its shares. `domains`: the sampled domains (name, role, weight,
    n_train_tokens), in the sampler's order. Without `stages`: one stage of the defaults from batch 0 on."""
    names = [d.name for d in domains]
    stages = list(stages)
    if not stages or stages[-1].until is not None:
        stages.append(Stage(key=DEFAULTS))  # after the last end: the defaults
    out, start = [], 0
    for stage in stages:
        if stage.until is not None and (isinstance(stage.until, bool) or not isinstance(stage.until, int)
                                        or stage.until <= start):
            raise CptlabError(f"{stage.key} ends at batch {stage.until!r}, not after its start (batch {start}): stage "
                              "ends must be increasing")
        unknown = sorted(set(stage.weights or ()) - set(names))
        if unknown:
            raise CptlabError(f"{stage.key}.weights.{unknown[0]}: no trained domain of that name "
                              f"(trained: {', '.join(names)})")
        ratio_key = f"{stage.key}.replay_ratio" if stage.replay_ratio is not None else "data.replay_ratio"
        ratio = float(replay_ratio if stage.replay_ratio is None else stage.replay_ratio)
        if not 0.0 <= ratio < 1.0:
            raise CptlabError(f"{ratio_key}={ratio!r} must be in [0, 1)")
        weights = _weights(domains, stage.weights, temperature, stage.key)
        shares = _shares(domains, weights, exact(ratio), ratio, ratio_key, stage.key)
        out.append(ResolvedStage(start, stage.until, exact(ratio), tuple(shares), stage.key))
        start = stage.until if stage.until is not None else start
    return out


def _weights(domains: Sequence, overrides: Mapping[str, float] | None, temperature: float | None,
             key: str) -> list[Fraction]:
    """Each domain's exact weight within its role: the configured one (or the stage's), times
    train_tokens ** (1 / temperature) when a temperature is set."""
    for name, w in (overrides or {}).items():
        if not float(w) > 0:
            raise CptlabError(f"{key}.weights.{name}={w!r} must be > 0")
    raw = [float((overrides or {}).get(d.name, d.weight)) for d in domains]
    if temperature is None:
        return [exact(w) for w in raw]
    if not temperature > 0:
        raise CptlabError(f"data.temperature={temperature!r} must be > 0")
    # In logs (a big corpus at a small T overflows a float), scaled by the largest of the role, then made exact
    # like a configured weight: a fraction of the largest with denominator <= MAX_DENOMINATOR (at least 1/that).
    logs = [math.log(w) + math.log(d.n_train_tokens) / temperature if w > 0 and d.n_train_tokens > 0 else None
            for w, d in zip(raw, domains)]
    top = {role: max((lg for lg, d in zip(logs, domains) if d.role == role and lg is not None), default=0.0)
           for role in ("replay", "new")}
    return [Fraction(0) if lg is None else max(exact(math.exp(lg - top[d.role])), Fraction(1, MAX_DENOMINATOR))
            for lg, d in zip(logs, domains)]


def _shares(domains: Sequence, weights: list[Fraction], ratio: Fraction, ratio_value: float, ratio_key: str,
            key: str) -> list[Fraction]:
    role_share = {"replay": ratio, "new": 1 - ratio}
    role_weight = {role: sum((w for w, d in zip(weights, domains) if d.role == role), Fraction(0))
                   for role in role_share}
    where = "" if key == DEFAULTS else f" ({key})"
    if ratio > 0 and role_weight["replay"] == 0:
        raise CptlabError(
            f"{ratio_key} is {ratio_value} but no domain has role 'replay' with weight > 0; "
            f"add a replay domain or set {ratio_key}=0{where}"
        )
    if role_weight["new"] == 0:
        raise CptlabError(
            f"{ratio_key} is {ratio_value} but no domain has role 'new' with weight > 0: nothing new to train on"
            + where
        )
    return [role_share[d.role] * w / role_weight[d.role] if role_share[d.role] > 0 else Fraction(0)
            for w, d in zip(weights, domains)]


class StagedRows:
    """Rows of each domain in global batches [0, step) under a list of resolved stages: the rows drawn before the
    stage in force (summed once per stage) plus that stage's own schedule from its start."""

    def __init__(self, stages: list[ResolvedStage], roles: list[str], batch_size: int):
        self.stages = stages
        self.starts = [s.start for s in stages]
        self.schedules = [RowSchedule(list(s.shares), roles, batch_size) for s in stages]
        self._before: list[list[int]] = [[0] * len(roles)]  # rows drawn before each stage's start, filled lazily

    def stage_at(self, step: int) -> int:
        """The index of the stage in force at global batch `step`."""
        return bisect.bisect_right(self.starts, step) - 1

    def _rows_before_stage(self, k: int) -> list[int]:
        while len(self._before) <= k:
            m = len(self._before) - 1  # the last stage whose start is known: add its whole length
            done = self.schedules[m].rows(self.stages[m].until - self.stages[m].start)
            self._before.append([a + b for a, b in zip(self._before[m], done)])
        return self._before[k]

    def rows_before(self, step: int) -> list[int]:
        """Rows each domain received in global batches [0, step)."""
        k = self.stage_at(step)
        inside = self.schedules[k].rows(step - self.stages[k].start)
        return [a + b for a, b in zip(self._rows_before_stage(k), inside)]

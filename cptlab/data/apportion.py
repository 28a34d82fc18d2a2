"""Exact integer apportionment of rows to fractional shares, as a pure function of how many steps have passed.

`RowSchedule` gives each domain floor(share * B) rows per step plus extra rows (`ExtraRows`) so that its count per
step is floor or ceil of share * B and its cumulative count stays within one row of exact. The mixture uses it per
stage for the domains of a batch (cptlab.data.stages) and, with B = 1 and the domain's row count as the step, for
the sources of a source-weighted domain (each domain row goes to exactly one source).
"""

from __future__ import annotations

import math
from fractions import Fraction

_CHECKPOINT_EVERY = 256  # steps between stored states of the extra-row schedule


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


class ExtraRows:
    """Which domains of one role get one row above their floor share in each step.

    Domain i is owed `a_i / den` extra rows per step (the fractional part of share_i * B); the role has `X(s)` extra
    rows in total after s steps (`floor(F s)`, or `ceil(F s)` for the role that takes the remainder of the batch).
    By construction a domain gets at most one extra per step (so its count is floor or ceil of share * B) and the
    role total is exact. Which domains get them follows the PD^2 Pfair rule (earliest pseudo-deadline, successor
    bit, group deadline), optimal for keeping each domain's cumulative lag below one row with a fixed capacity;
    with this floor/ceil capacity the same bound held on every randomized configuration tested (tests/data).
    The schedule repeats every `den` steps, so the state after s = q * den + r steps is `q * E(den) + E(r)`.
    """

    def __init__(self, numerators: list[int], den: int, ceil_capacity: bool):
        self.a = numerators
        self.den = den
        self.total = sum(numerators)
        self.ceil_capacity = ceil_capacity
        self._checkpoints: list[tuple[int, ...]] = [(0,) * len(numerators)]  # state at r = k * _CHECKPOINT_EVERY
        self._cursor: tuple[int, tuple[int, ...]] = (0, self._checkpoints[0])
        self._period: tuple[int, ...] | None = None  # the state after one whole period

    def capacity(self, s: int) -> int:
        """Extra rows of the whole role in steps [0, s)."""
        return _cdiv(self.total * s, self.den) if self.ceil_capacity else (self.total * s) // self.den

    def _advance(self, r: int, state: tuple[int, ...]) -> tuple[int, ...]:
        """The state after step r of the period, given the state before it."""
        e = self.capacity(r + 1) - self.capacity(r)
        if e == 0:
            return state
        keys = []
        for i, (a, j) in enumerate(zip(self.a, state)):
            if a == 0:
                continue
            j += 1  # the next extra row ("subtask") of domain i
            release, deadline = ((j - 1) * self.den) // a, _cdiv(j * self.den, a)
            successor_bit = deadline - (j * self.den) // a
            group = 0
            if 2 * a >= self.den:  # heavy domain: PD^2 group deadline
                group = _cdiv(_cdiv(deadline * (self.den - a), self.den) * self.den, self.den - a)
            keys.append((release > r, deadline, -successor_bit, -group, i))
        chosen = {k[-1] for k in sorted(keys)[:e]}
        return tuple(x + 1 if i in chosen else x for i, x in enumerate(state))

    def _state_in_period(self, r: int) -> tuple[int, ...]:
        """Extras of each domain in steps [0, r) of the period, simulated from the nearest known state."""
        k = min(r // _CHECKPOINT_EVERY, len(self._checkpoints) - 1)
        at, state = self._cursor  # sequential callers (one step after another) advance one step per call
        if not k * _CHECKPOINT_EVERY <= at <= r:
            at, state = k * _CHECKPOINT_EVERY, self._checkpoints[k]
        while at < r:
            state = self._advance(at, state)
            at += 1
            if at == len(self._checkpoints) * _CHECKPOINT_EVERY:
                self._checkpoints.append(state)
        self._cursor = (at, state)
        return state

    def cumulative(self, s: int) -> tuple[int, ...]:
        """Extra rows of each domain in steps [0, s)."""
        q, r = divmod(s, self.den)
        if q == 0:
            return self._state_in_period(r)
        if self._period is None:
            self._period = self._state_in_period(self.den)
        return tuple(q * p + x for p, x in zip(self._period, self._state_in_period(r)))


class RowSchedule:
    """Rows of each domain in the first s steps of one fixed mix of `batch_size` rows per step.

    `shares` (exact, summing to 1) and `roles` ("replay" or "new") are per domain. Replay rows total
    floor(replay share * B * s), so replay never runs ahead of its share; the new role takes the rest (ceil)."""

    def __init__(self, shares: list[Fraction], roles: list[str], batch_size: int):
        self.shares = list(shares)
        self.base = [math.floor(s * batch_size) for s in shares]
        self.roles = {role: [i for i, r in enumerate(roles) if r == role] for role in ("replay", "new")}
        self.extras: dict[str, ExtraRows] = {}
        for role, members in self.roles.items():
            fractions = [shares[i] * batch_size - self.base[i] for i in members]
            den = math.lcm(*(f.denominator for f in fractions))  # Python ints: no overflow for odd weights
            self.extras[role] = ExtraRows([int(f * den) for f in fractions], den, ceil_capacity=(role == "new"))

    def rows(self, s: int) -> list[int]:
        """Rows each domain received in steps [0, s): its floor share per step plus its scheduled extras."""
        rows = [b * s for b in self.base]
        for role, members in self.roles.items():
            for i, extra in zip(members, self.extras[role].cumulative(s)):
                rows[i] += extra
        return rows

"""The training stream: which rows of global batch `step` come from which domain and which token blocks they are.
Everything is a pure function of (seed, step) — no iterator state — so resuming at step s reproduces the run exactly."""

from __future__ import annotations

import hashlib
import math
import os
from fractions import Fraction

import numpy as np
import torch

from cptlab.data.bijection import KeyedPermutation
from cptlab.data.tokens import DomainTokens
from cptlab.errors import CptlabError

# Shares are turned into exact fractions so that 0.3 means 3/10 and per-batch rounding can be carried exactly.
_MAX_DENOMINATOR = 10_000
_CHECKPOINT_EVERY = 256  # steps between stored states of the extra-row schedule


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


class _ExtraRows:
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


class MixtureSampler:
    """Global batches of `batch_size` rows of `seq_len + 1` tokens, mixed from the domains' training arrays.

    Replay-role domains get `replay_ratio` of the rows, new-role domains the rest, split within a role by weight;
    eval-role domains (evaluation only) are left out: the stream never draws from them.
    Every batch has exactly `batch_size` rows, each domain gets floor or ceil of share * batch_size rows per batch,
    and the fractional parts are carried so that cumulative counts stay within one row of the exact share.
    """

    def __init__(self, domains: list[DomainTokens], replay_ratio: float, batch_size: int, seq_len: int, seed: int = 0):
        if not domains:
            raise CptlabError("data.domains is empty: the mixture needs at least one domain")
        names = [d.name for d in domains]
        if len(set(names)) != len(names):
            raise CptlabError(f"data.domains: duplicate domain names in {names}")
        # replay_ratio, batch_size, seq_len, seed and the domains' roles and weights are a validated config's
        # (rules beside cptlab.config's fields); what is refused here depends on the domains actually built.
        self.domains = [d for d in domains if d.role != "eval"]
        self.replay_ratio = float(replay_ratio)
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.seed = seed
        self._ratio = Fraction(replay_ratio).limit_denominator(_MAX_DENOMINATOR)
        exact_shares = self._shares()
        self.n_blocks = [(d.n_train_tokens - 1) // seq_len for d in self.domains]
        self._is_replay = np.array([d.role == "replay" for d in self.domains])
        for d, share, n in zip(self.domains, exact_shares, self.n_blocks):
            if share > 0 and n < 1:
                raise CptlabError(
                    f"domain '{d.name}' has {d.n_train_tokens} training tokens, fewer than one block "
                    f"(data.seq_len+1 = {seq_len + 1}); add data to it or lower data.seq_len"
                )
        self._base = [math.floor(s * batch_size) for s in exact_shares]
        self._roles = {role: [i for i, d in enumerate(self.domains) if d.role == role] for role in ("replay", "new")}
        self._extras = {}
        for role, members in self._roles.items():
            fractions = [exact_shares[i] * batch_size - self._base[i] for i in members]
            den = math.lcm(*(f.denominator for f in fractions))  # Python ints: no overflow for odd weights
            # Replay rows are floor(ratio * B * s) so replay never runs ahead of its share; new takes the rest (ceil).
            self._extras[role] = _ExtraRows([int(f * den) for f in fractions], den, ceil_capacity=(role == "new"))
        self._fds: dict[int, list[int]] = {}  # domain -> file descriptors of its train files, opened in this process
        self._offsets: dict[int, np.ndarray] = {}  # domain -> first token of each train file in its train stream
        self._orders: dict[tuple[int, int], KeyedPermutation] = {}

    def _shares(self) -> list[Fraction]:
        weights = [Fraction(d.weight).limit_denominator(_MAX_DENOMINATOR) for d in self.domains]
        role_share = {"replay": self._ratio, "new": 1 - self._ratio}
        role_weight = {
            role: sum((w for w, d in zip(weights, self.domains) if d.role == role), Fraction(0)) for role in role_share
        }
        if self._ratio > 0 and role_weight["replay"] == 0:
            raise CptlabError(
                f"data.replay_ratio is {self.replay_ratio} but no domain has role 'replay' with weight > 0; "
                "add a replay domain or set data.replay_ratio=0"
            )
        if role_weight["new"] == 0:
            raise CptlabError(
                f"data.replay_ratio is {self.replay_ratio} but no domain has role 'new' with weight > 0: "
                "nothing new to train on"
            )
        return [
            role_share[d.role] * w / role_weight[d.role] if role_share[d.role] > 0 else Fraction(0)
            for w, d in zip(weights, self.domains)
        ]

    # -- the schedule -------------------------------------------------------------------------------------------

    def _rows_before(self, step: int) -> list[int]:
        """Rows each domain received in steps [0, step): its floor share per batch plus its scheduled extras."""
        rows = [b * step for b in self._base]
        for role, members in self._roles.items():
            for i, extra in zip(members, self._extras[role].cumulative(step)):
                rows[i] += extra
        return rows

    def _check_step(self, step: int) -> None:
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
            raise CptlabError(f"step must be an integer >= 0, got {step!r}")

    def counts(self, step: int) -> dict[str, int]:
        """Rows of each domain in global batch `step` (they sum to `batch_size`)."""
        self._check_step(step)
        before, after = self._rows_before(step), self._rows_before(step + 1)
        return {d.name: a - b for d, a, b in zip(self.domains, after, before)}

    def replay_share(self, steps: int) -> float:
        """The exact share of replay rows in steps [0, steps)."""
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        replay_rows = math.floor(self._ratio * self.batch_size * steps)
        return replay_rows / (steps * self.batch_size)

    # -- the blocks ---------------------------------------------------------------------------------------------

    def _order(self, i: int, epoch: int) -> KeyedPermutation:
        """Domain i's block order in `epoch`: a keyed bijection computed per index (O(1) memory, nothing built up
        front), a pure function of (seed, domain, epoch)."""
        key = (i, epoch)
        if key not in self._orders:
            if len(self._orders) >= 2 * len(self.domains):  # the current and next epoch of each domain at most
                self._orders.pop(next(iter(self._orders)))
            self._orders[key] = KeyedPermutation(self.n_blocks[i], (self.seed, i, epoch))
        return self._orders[key]

    def _blocks(self, i: int, first: int, count: int) -> np.ndarray:
        """Block indices of domain i's consumed blocks first .. first+count-1 (a new order every epoch)."""
        k = np.arange(first, first + count)
        epochs, pos = np.divmod(k, self.n_blocks[i])
        out = np.empty(count, dtype=np.int64)
        for e in np.unique(epochs):
            sel = epochs == e
            out[sel] = self._order(i, int(e))(pos[sel])
        return out

    def _row(self, i: int, start: int, length: int) -> np.ndarray:
        """Tokens [start, start + length) of domain i's train array, read with os.pread: unlike slicing a
        memmap, a random read does not map 64 KB windows of the corpus into the process's resident memory
        (benchmarks/README.md, loader). The file is opened lazily per process: a sampler pickled into
        DataLoader workers carries no open file handles."""
        domain = self.domains[i]
        if i not in self._fds:  # one file per shard; the train stream is their concatenation
            parts = domain.train_parts()
            self._fds[i] = [os.open(path, os.O_RDONLY) for path, _ in parts]
            self._offsets[i] = np.cumsum([0] + [n for _, n in parts])
        itemsize = np.dtype(domain.dtype).itemsize
        offsets, pieces, pos, end = self._offsets[i], [], start, start + length
        k = int(np.searchsorted(offsets, pos, side="right")) - 1
        while pos < end and k < len(self._fds[i]):  # a block that crosses a shard boundary is read from both
            take = min(end, int(offsets[k + 1])) - pos
            data = os.pread(self._fds[i][k], take * itemsize, (pos - int(offsets[k])) * itemsize)
            if len(data) != take * itemsize:
                raise CptlabError(f"token cache {domain.train_parts()[k][0]} is shorter than its metadata says: "
                                  "delete it")
            pieces.append(data)
            pos, k = pos + take, k + 1
        if pos != end:
            raise CptlabError(f"token cache {domain.dir} is shorter than its metadata says: delete it")
        return np.frombuffer(pieces[0] if len(pieces) == 1 else b"".join(pieces), dtype=domain.dtype)

    def batch(self, step: int, rank: int = 0, world_size: int = 1) -> dict[str, torch.Tensor]:
        """Rank `rank`'s rows `[rank::world_size]` of global batch `step` (shuffled within the batch)."""
        self._check_step(step)
        if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
            raise CptlabError(f"world_size must be an integer >= 1, got {world_size!r}")
        if self.batch_size % world_size:
            raise CptlabError(
                f"data.batch_size={self.batch_size} is not divisible by the world size {world_size} (devices x nodes)"
            )
        if not 0 <= rank < world_size:
            raise CptlabError(f"rank must be in [0, {world_size}), got {rank!r}")
        before, after = self._rows_before(step), self._rows_before(step + 1)
        domain_of_row, block_of_row = [], []
        for i in range(len(self.domains)):  # grouped by domain in a fixed order, then shuffled
            count = after[i] - before[i]
            if count:
                domain_of_row.append(np.full(count, i, dtype=np.int64))
                block_of_row.append(self._blocks(i, before[i], count))
        domain_of_row = np.concatenate(domain_of_row)
        block_of_row = np.concatenate(block_of_row)
        mine = np.random.default_rng([self.seed, step]).permutation(self.batch_size)[rank::world_size]
        length = self.seq_len + 1
        rows = np.empty((len(mine), length), dtype=np.int64)
        for r, j in enumerate(mine):
            start = int(block_of_row[j]) * self.seq_len
            rows[r] = self._row(int(domain_of_row[j]), start, length)
        domain = domain_of_row[mine]
        # Contiguous copies: losses commonly call .view(-1) on targets, which a shifted view would not allow.
        return {
            "input_ids": torch.from_numpy(np.ascontiguousarray(rows[:, :-1])),
            "targets": torch.from_numpy(np.ascontiguousarray(rows[:, 1:])),
            "domain": torch.from_numpy(domain),
            "is_replay": torch.from_numpy(self._is_replay[domain]),
            "step": torch.tensor(step, dtype=torch.long),
        }

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_fds"] = {}
        state["_offsets"] = {}
        return state


def eval_blocks(domain: DomainTokens, seq_len: int, max_blocks: int | None = None) -> np.ndarray:
    """Blocks of `seq_len + 1` tokens from the held-out array, spread evenly over all of it.

    The held-out array is every held-out document in corpus order (source after source), cut into
    `(n_val_tokens - 1) // seq_len` windows of stride `seq_len`; `max_blocks` of them are taken at even
    spacing (the middle window of each of `max_blocks` equal stretches), so every part of the stream — every
    source holding at least 1/max_blocks of the domain's held-out tokens — is scored in proportion to its
    size, not just the first documents. A pure function of the held-out tokens, `seq_len` and `max_blocks`:
    the same blocks at every evaluation and in every run with the same split, tokenizer and data settings."""
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
        raise CptlabError(f"data.seq_len must be an integer >= 1, got {seq_len!r}")
    n = (domain.n_val_tokens - 1) // seq_len
    if n < 1:
        raise CptlabError(
            f"held-out split of domain '{domain.name}' has {domain.n_val_tokens} tokens, fewer than one eval block "
            f"(data.seq_len+1 = {seq_len + 1}); raise data.domains.{domain.name}.heldout or lower data.seq_len"
        )
    m = n if max_blocks is None else min(n, max(0, max_blocks))
    starts = ((2 * np.arange(m, dtype=np.int64) + 1) * n // (2 * m)) * seq_len  # all n windows when m == n
    # Fancy indexing of the memmap reads only the pages of the chosen windows.
    return np.asarray(domain.val_tokens()[starts[:, None] + np.arange(seq_len + 1)], dtype=np.int64)


def blocks_sha256(blocks) -> str:
    """A hash of evaluation blocks (shape and token ids): equal hashes = scored on the very same tokens."""
    array = np.ascontiguousarray(np.asarray(blocks), dtype="<i8")
    h = hashlib.sha256(f"{array.shape}".encode())
    h.update(array.tobytes())
    return h.hexdigest()

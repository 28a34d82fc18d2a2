"""The training stream: which rows of global batch `step` come from which domain and which token blocks they are.
Everything is a pure function of (seed, step) — no iterator state — so resuming at step s reproduces the run exactly."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence

import numpy as np
import torch

from cptlab.data.bijection import KeyedPermutation
from cptlab.data.source_weights import SourceSplit
from cptlab.data.stages import DEFAULTS, Stage, StagedRows, resolve_stages
from cptlab.data.tokens import DomainTokens
from cptlab.errors import CptlabError


class _Stream:
    """What blocks are drawn from: a domain's whole train array, or one source's part of it (source weights).
    `key` picks the block order of each epoch (KeyedPermutation), `parts` are its files in order."""

    def __init__(self, domain: int, parts: list[tuple], seq_len: int, key: tuple[int, ...], label: str):
        self.domain, self.parts, self.key, self.label = domain, parts, key, label
        self.n_tokens = sum(n for _, n in parts)
        self.n_blocks = max(0, (self.n_tokens - 1) // seq_len)


class MixtureSampler:
    """Global batches of `batch_size` rows of `seq_len + 1` tokens, mixed from the domains' training arrays.

    Replay-role domains get `replay_ratio` of the rows, new-role domains the rest, split within a role by weight;
    eval-role domains (evaluation only) are left out: the stream never draws from them.
    Every batch has exactly `batch_size` rows, each domain gets floor or ceil of share * batch_size rows per batch,
    and the fractional parts are carried so that cumulative counts stay within one row of the exact share.
    `stages` (cptlab.data.stages, in global batches) change the ratio and the weights from one step range to the
    next, each exact from its own start; `temperature` scales the weights by the domains' sizes. A domain with
    source weights (DomainTokens.source_weights) splits its rows among its sources (cptlab.data.source_weights).
    """

    def __init__(self, domains: list[DomainTokens], replay_ratio: float, batch_size: int, seq_len: int, seed: int = 0,
                 *, stages: Sequence[Stage] = (), temperature: float | None = None):
        if not domains:
            raise CptlabError("data.domains is empty: the mixture needs at least one domain")
        names = [d.name for d in domains]
        if len(set(names)) != len(names):
            raise CptlabError(f"data.domains: duplicate domain names in {names}")
        # replay_ratio, batch_size, seq_len, seed and the domains' roles and weights are a validated config's
        # (rules beside the schema's fields); what is refused here depends on the domains actually built.
        self.domains = [d for d in domains if d.role != "eval"]
        self.replay_ratio = float(replay_ratio)
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.seed = seed
        self.temperature = temperature
        self.stages = resolve_stages(self.domains, replay_ratio, stages, temperature)
        self._rows = StagedRows(self.stages, [d.role for d in self.domains], batch_size)
        self._is_replay = np.array([d.role == "replay" for d in self.domains])
        self._splits: dict[int, SourceSplit] = {}  # domain -> its rows split among its sources
        self._streams: dict[int, list[_Stream]] = {}  # domain -> its streams (one, or one per source)
        for i, d in enumerate(self.domains):
            self._streams[i] = self._domain_streams(i, d)
            if d.source_weights:
                self._splits[i] = SourceSplit(d.source_weights)
        self.n_blocks = [sum(s.n_blocks for s in self._streams[i]) for i in range(len(self.domains))]
        self._check_blocks()
        self._fds: dict[tuple, list[int]] = {}  # stream key -> file descriptors of its files, opened in this process
        self._offsets: dict[tuple, np.ndarray] = {}  # stream key -> first token of each of its files in the stream
        self._orders: dict[tuple[tuple[int, ...], int], KeyedPermutation] = {}

    def _domain_streams(self, i: int, d: DomainTokens) -> list[_Stream]:
        parts = d.train_parts()
        if not d.source_weights:
            return [_Stream(i, parts, self.seq_len, (self.seed, i), d.name)]
        if len(d.train_sources) != len(d.train_files or parts):
            raise CptlabError(f"token cache {d.dir} does not record which source each shard came from (built by an "
                              f"older cptlab): delete it to rebuild it (its shards are reused), or unset "
                              f"data.domains.{d.name}.source_weights")
        return [_Stream(i, [p for p, s in zip(parts, d.train_sources) if s == label], self.seq_len,
                        (self.seed, i, j), label) for j, (label, _) in enumerate(d.source_weights)]

    def _check_blocks(self) -> None:
        """Every stream a stage draws rows from has at least one block."""
        for stage in self.stages:
            where = "" if stage.key == DEFAULTS else f" ({stage.key} gives it a share)"
            for i, (d, share) in enumerate(zip(self.domains, stage.shares)):
                if share <= 0:
                    continue
                if self.n_blocks[i] < 1:
                    raise CptlabError(
                        f"domain '{d.name}' has {d.n_train_tokens} training tokens, fewer than one block "
                        f"(data.seq_len+1 = {self.seq_len + 1}); add data to it or lower data.seq_len{where}"
                    )
                for stream in self._streams[i]:
                    if stream.n_blocks < 1:
                        raise CptlabError(
                            f"data.domains.{d.name}.source_weights: source {stream.label!r} has {stream.n_tokens} "
                            f"training tokens, fewer than one block (data.seq_len+1 = {self.seq_len + 1}); add data "
                            f"to it, lower data.seq_len or drop it from the domain's sources{where}"
                        )

    # -- the schedule -------------------------------------------------------------------------------------------

    def _rows_before(self, step: int) -> list[int]:
        """Rows each domain received in steps [0, step) (cptlab.data.stages.StagedRows)."""
        return self._rows.rows_before(step)

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
        rows = self._rows_before(steps)
        replay_rows = sum(r for r, replay in zip(rows, self._is_replay) if replay)
        return replay_rows / (steps * self.batch_size)

    def mix(self, steps: int) -> dict[str, float]:
        """The share of all rows of steps [0, steps) each domain had ("NAME"), and each source of a domain with
        source weights ("NAME/SOURCE"): what the run logs as train/mix/... (all 0 before the first step)."""
        rows = self._rows_before(steps)
        total = steps * self.batch_size
        out = {}
        for i, (d, r) in enumerate(zip(self.domains, rows)):
            out[d.name] = r / total if total else 0.0
            if i in self._splits:
                for label, n in zip(self._splits[i].labels, self._splits[i].rows(r)):
                    out[f"{d.name}/{label}"] = n / total if total else 0.0
        return out

    def schedule(self, batches_per_step: int = 1) -> list[dict]:
        """The resolved stages (summary.json "mixture"): each one's first step and end (optimizer steps, and
        tokens), replay ratio and exact shares as floats, per domain and per source of a weighted domain."""
        tokens_per_batch = self.batch_size * self.seq_len
        out = []
        for stage in self.stages:
            entry = {"stage": stage.key, "from_step": stage.start // batches_per_step,
                     "until_step": None if stage.until is None else stage.until // batches_per_step,
                     "until_tokens": None if stage.until is None else stage.until * tokens_per_batch,
                     "replay_ratio": float(stage.ratio),
                     "shares": {d.name: float(s) for d, s in zip(self.domains, stage.shares)}}
            sources = {self.domains[i].name: {label: float(share * stage.shares[i])
                                              for label, share in zip(split.labels, split.shares)}
                       for i, split in self._splits.items()}
            if sources:
                entry["source_shares"] = sources
            out.append(entry)
        return out

    # -- the blocks ---------------------------------------------------------------------------------------------

    def _order(self, stream: _Stream, epoch: int) -> KeyedPermutation:
        """A stream's block order in `epoch`: a keyed bijection computed per index (O(1) memory, nothing built up
        front), a pure function of (seed, domain[, source], epoch)."""
        key = (stream.key, epoch)
        if key not in self._orders:
            if len(self._orders) >= 2 * sum(map(len, self._streams.values())):  # the current and next epoch at most
                self._orders.pop(next(iter(self._orders)))
            self._orders[key] = KeyedPermutation(stream.n_blocks, (*stream.key, epoch))
        return self._orders[key]

    def _blocks(self, stream: _Stream, first: int, count: int) -> np.ndarray:
        """Block indices of a stream's consumed blocks first .. first+count-1 (a new order every epoch)."""
        k = np.arange(first, first + count)
        epochs, pos = np.divmod(k, stream.n_blocks)
        out = np.empty(count, dtype=np.int64)
        for e in np.unique(epochs):
            sel = epochs == e
            out[sel] = self._order(stream, int(e))(pos[sel])
        return out

    def _row(self, stream: _Stream, start: int, length: int) -> np.ndarray:
        """Tokens [start, start + length) of a stream, read with os.pread: unlike slicing a memmap, a random read
        does not map 64 KB windows of the corpus into the process's resident memory (benchmarks/README.md,
        loader). The files are opened lazily per process: a sampler pickled into DataLoader workers carries no
        open file handles."""
        domain = self.domains[stream.domain]
        sid = stream.key
        if sid not in self._fds:  # one file per shard; the stream is their concatenation
            self._fds[sid] = [os.open(path, os.O_RDONLY) for path, _ in stream.parts]
            self._offsets[sid] = np.cumsum([0] + [n for _, n in stream.parts])
        itemsize = np.dtype(domain.dtype).itemsize
        offsets, pieces, pos, end = self._offsets[sid], [], start, start + length
        k = int(np.searchsorted(offsets, pos, side="right")) - 1
        while pos < end and k < len(self._fds[sid]):  # a block that crosses a shard boundary is read from both
            take = min(end, int(offsets[k + 1])) - pos
            data = os.pread(self._fds[sid][k], take * itemsize, (pos - int(offsets[k])) * itemsize)
            if len(data) != take * itemsize:
                raise CptlabError(f"token cache {stream.parts[k][0]} is shorter than its metadata says: delete it")
            pieces.append(data)
            pos, k = pos + take, k + 1
        if pos != end:
            raise CptlabError(f"token cache {domain.dir} is shorter than its metadata says: delete it")
        return np.frombuffer(pieces[0] if len(pieces) == 1 else b"".join(pieces), dtype=domain.dtype)

    def _drawn(self, i: int, before: int, after: int) -> list[tuple[_Stream, int, int]]:
        """(stream, first block index, count) of domain i's rows [before, after) of its own row sequence."""
        streams = self._streams[i]
        if i not in self._splits:
            return [(streams[0], before, after - before)]
        split = self._splits[i]
        return [(s, b, a - b) for s, b, a in zip(streams, split.rows(before), split.rows(after))]

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
        domain_of_row, stream_of_row, block_of_row = [], [], []
        for i in range(len(self.domains)):  # grouped by domain (and source) in a fixed order, then shuffled
            for stream, first, count in self._drawn(i, before[i], after[i]):
                if count:
                    domain_of_row.append(np.full(count, i, dtype=np.int64))
                    stream_of_row += [stream] * count
                    block_of_row.append(self._blocks(stream, first, count))
        domain_of_row = np.concatenate(domain_of_row)
        block_of_row = np.concatenate(block_of_row)
        mine = np.random.default_rng([self.seed, step]).permutation(self.batch_size)[rank::world_size]
        length = self.seq_len + 1
        rows = np.empty((len(mine), length), dtype=np.int64)
        for r, j in enumerate(mine):
            start = int(block_of_row[j]) * self.seq_len
            rows[r] = self._row(stream_of_row[j], start, length)
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

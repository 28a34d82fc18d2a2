"""The evaluation sample's own noise: a bootstrap over evaluation blocks.

The seed intervals of cptlab-compare say how much a figure would move with another seed, on the fixed
evaluation blocks (eval.max_blocks per domain). Another draw of blocks from the same held-out text would move it
too. Each completed run records its final evaluation's per-block sums (summary.json `eval_block_sums`,
cptlab.rundir.summary.EVAL_BLOCK_SUMS); resampling the blocks with replacement (`N_BOOT` times, generators seeded
from `BOOT_SEED`, the domain and the blocks' hash: the same output every time) gives

- for a row, the bootstrap of its **seed mean**: every resample of the blocks is applied to every seed of the row
  (the seeds scored the same blocks, so the block draw is common to them), and the row's figure (the mean over
  its domains of the seed-mean bpb at the end) is recomputed; the half-width is `Z` x the replicates' sd;
- for a difference between two rows, the same with the difference recomputed: **paired blocks** when the two
  rows scored the same blocks (same `eval_blocks_sha256`: the same resample is applied to both, and the noise
  the blocks share cancels), independent resamples otherwise;
- the advice on eval.max_blocks: per domain, the noisiest difference from the reference row (else the noisiest
  row), and the blocks that would bring it below SEED_SHARE of its seed interval and below the --margin: the
  half-width shrinks as 1/sqrt(blocks) (blocks_needed).

Runs without the record (written before it, unfinished, the EMA view) give no eval interval: an empty cell."""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np

from cptlab.errors import CptlabError
from cptlab.rundir.summary import EVAL_BLOCK_SUMS

N_BOOT = 2000
BOOT_SEED = 0
Z = 1.959963984540054  # the normal 0.975 quantile: a 95% half-width from the bootstrap's sd
DIGITS = 6  # a 2000-replicate sd is good to ~2%: more digits would be noise (and machine-dependent)
SEED_SHARE = 0.25  # advice: the evaluation noise below this share of the seed interval
SEED_CI_FLOOR = 1e-6  # bpb: a seed interval below this is float rounding (identical runs), not a target


@dataclass(frozen=True)
class Blocks:
    """One run's final per-block sums on one domain; `key` names the blocks (their hash, else their count):
    equal keys = the same blocks, resampled together."""
    nll_bits: np.ndarray
    bytes: np.ndarray
    key: str
    available: int | None = None  # blocks the held-out split could give (eval.max_blocks' ceiling)

    @property
    def n(self) -> int:
        return len(self.nll_bits)

    def bpb(self) -> float:
        return float(self.nll_bits.sum() / self.bytes.sum())


def run_blocks(run, domain: str) -> Blocks | None:
    """The per-block record of a completed run (cptlab.compare.runs.Run) on `domain`; None when it has none
    (older runs, unfinished ones, the EMA view: the record is the raw weights') or an unusable one."""
    if getattr(run, "view", "raw") != "raw":
        return None
    entry = (run.summary.get(EVAL_BLOCK_SUMS) or {}).get(domain)
    if not isinstance(entry, dict):
        return None
    try:
        nll = np.asarray(entry["nll_bits"], dtype=np.float64)
        nbytes = np.asarray(entry["bytes"], dtype=np.float64)
    except (KeyError, TypeError, ValueError):
        return None
    if nll.ndim != 1 or nll.shape != nbytes.shape or len(nll) == 0 or not nbytes.sum() > 0 \
            or not np.isfinite(nll).all() or not np.isfinite(nbytes).all():
        return None
    sha = ((run.summary.get("domains") or {}).get(domain) or {}).get("eval_blocks_sha256")
    available = entry.get("available")
    return Blocks(nll, nbytes, key=str(sha or f"{len(nll)} blocks"),
                  available=available if isinstance(available, int) else None)


class Resampler:
    """Bootstrap indices, one [n_boot, n] matrix per set of blocks (domain, key), from a generator seeded by
    (seed, domain, key): the same blocks get the same resamples in every row and every call (paired, and
    reproducible), different blocks independent ones."""

    def __init__(self, n_boot: int = N_BOOT, seed: int = BOOT_SEED):
        if n_boot < 2:
            raise CptlabError(f"the bootstrap over evaluation blocks needs at least 2 resamples, got {n_boot}")
        self.n_boot, self.seed = n_boot, seed
        self._indices: dict[tuple, np.ndarray] = {}

    def indices(self, domain: str, blocks: Blocks) -> np.ndarray:
        key = (domain, blocks.key, blocks.n)
        if key not in self._indices:
            rng = np.random.default_rng([self.seed, zlib.crc32(f"{domain}\0{blocks.key}\0{blocks.n}".encode())])
            self._indices[key] = rng.integers(0, blocks.n, size=(self.n_boot, blocks.n))
        return self._indices[key]

    def replicates(self, domain: str, blocks: Blocks) -> np.ndarray:
        """bpb of each resample: the resampled blocks' bits over their bytes (a ratio, as bpb itself is)."""
        idx = self.indices(domain, blocks)
        return blocks.nll_bits[idx].sum(axis=1) / blocks.bytes[idx].sum(axis=1)


def row_replicates(resampler: Resampler, runs: list, domains: list[str]) -> np.ndarray | None:
    """Bootstrap replicates of a row's end bpb: the mean over `domains` of the mean over its runs (seeds), each
    domain's blocks resampled once per replicate for all the seeds that scored them. None when a run lacks
    the record on one of the domains (or there is no domain)."""
    per_domain = []
    for domain in domains:
        seeds = [run_blocks(run, domain) for run in runs]
        if not seeds or any(b is None for b in seeds):
            return None
        per_domain.append(np.mean([resampler.replicates(domain, b) for b in seeds], axis=0))
    return np.mean(per_domain, axis=0) if per_domain else None


def half_width(replicates: np.ndarray | None) -> float | None:
    """The 95% half-width, Z x the bootstrap sd (rounded to DIGITS); None without replicates."""
    if replicates is None:
        return None
    return round(Z * float(np.std(replicates, ddof=1)), DIGITS)


def same_blocks(runs: list, domains: list[str]) -> bool:
    """Whether every run scored the same blocks on each domain (one key per domain): a paired bootstrap."""
    for domain in domains:
        keys = {(b.key, b.n) for b in (run_blocks(run, domain) for run in runs) if b is not None}
        if len(keys) > 1:
            return False
    return True


def difference(resampler: Resampler, runs: list, ref_runs: list, domains: list[str]
               ) -> tuple[float | None, str | None]:
    """(95% half-width, method) of the evaluation noise in a row's end bpb minus the reference row's, on
    `domains`: "paired blocks" when both rows scored the same blocks, "unpaired blocks" otherwise; (None, None)
    when either row lacks block data."""
    a, b = row_replicates(resampler, runs, domains), row_replicates(resampler, ref_runs, domains)
    if a is None or b is None:
        return None, None
    return half_width(a - b), "paired blocks" if same_blocks(runs + ref_runs, domains) else "unpaired blocks"


# -- eval.max_blocks advice ----------------------------------------------------------------------------------


def blocks_needed(n_blocks: int, noise: float, target: float) -> int:
    """Blocks for an evaluation-noise half-width of `noise` at `n_blocks` blocks to fall to `target`: the noise of
    a mean over independent blocks shrinks as 1/sqrt(blocks), so n_blocks * (noise / target)^2, rounded up."""
    if not target > 0 or not math.isfinite(target):
        raise CptlabError(f"the evaluation-noise target must be a positive number of bpb, got {target}")
    if n_blocks < 1 or not noise >= 0:
        raise CptlabError(f"blocks_needed needs n_blocks >= 1 and noise >= 0, got {n_blocks} and {noise}")
    return max(1, math.ceil(n_blocks * (noise / target) ** 2 - 1e-9))


def advice(domain: str, n_blocks: int, noise: float, seed_ci: float | None, margin: float,
           available: int | None, what: str = "") -> str:
    """One line: the domain's evaluation noise at its blocks (`what`: on which figure), the blocks that would bring
    it below SEED_SHARE of the seed interval and below the --margin, and whether eval.max_blocks should be raised."""
    targets = [(f"{SEED_SHARE:g} of the seed interval (± {seed_ci:.4f})", SEED_SHARE * seed_ci)
               if seed_ci and seed_ci > SEED_CI_FLOOR else None, (f"the --margin ({margin:g})", margin)]
    needs = [(text, blocks_needed(n_blocks, noise, t)) for text, t in (x for x in targets if x)]
    line = (f"{domain}: evaluation noise ± {noise:.4f} bpb{' ' + what if what else ''} at {n_blocks} blocks; below "
            + ", below ".join(f"{text} from ~{n} blocks" for text, n in needs))
    most = max(n for _, n in needs)
    if most <= n_blocks:
        return line + f": eval.max_blocks={n_blocks} is enough"
    line += f": raise eval.max_blocks to ~{most}"
    if available is not None and most > available:
        line += (f" (the held-out split gives {available} blocks at this data.seq_len: raise "
                 f"data.domains.{domain}.heldout too)")
    return line


def _seed_interval(runs: list, ref_runs: list | None, domain: str) -> float | None:
    """The unadjusted 95% seed interval of the row's end bpb on `domain` (minus the reference row's, paired or
    Welch as cptlab.compare.stats.compare_samples decides): the seed noise the evaluation noise is set against."""
    from cptlab.compare.stats import CONFIDENCE, compare_samples, mean_ci, t_quantile

    def by_seed(rs):
        return {(r.seed if r.seed is not None else ("run", i)): r.domain_bpb(domain)["bpb_end"] for i, r in enumerate(rs)}

    if ref_runs is None:
        return mean_ci([r.domain_bpb(domain)["bpb_end"] for r in runs]).ci
    c = compare_samples(by_seed(runs), by_seed(ref_runs))
    if c.se is None or not c.df:
        return None
    return t_quantile(0.5 + CONFIDENCE / 2, c.df) * c.se


def max_blocks_advice(rows: list[list], ref: int | None, margin: float, domains: list[str]) -> list[str]:
    """Per domain with block data, the advice line (advice) for the evaluation noise that matters most to the table:
    the noisiest difference from the reference row when there is one (paired blocks when the rows scored the same
    blocks: the noise they share cancels), else the noisiest row's own end bpb. `rows`: each row's completed runs
    (empty for the others); `ref`: the reference row's index."""
    resampler, lines = Resampler(), []
    for domain in domains:
        own, diffs = [], []
        for i, runs in enumerate(rows):
            first = run_blocks(runs[0], domain) if runs else None
            noise = half_width(row_replicates(resampler, runs, [domain])) if first else None
            if noise is None:
                continue
            own.append((noise, first, _seed_interval(runs, None, domain), "on a row's bpb"))
            if ref is not None and i != ref and rows[ref]:
                hw, method = difference(resampler, runs, rows[ref], [domain])
                if hw is not None:
                    what = f"on the differences from the reference row ({method}; ± {noise:.4f} on a row's bpb)"
                    diffs.append((hw, first, _seed_interval(runs, rows[ref], domain), what))
        if own:
            noise, first, seed_ci, what = max(diffs or own, key=lambda x: x[0])
            lines.append(advice(domain, first.n, noise, seed_ci, margin, first.available, what))
    return lines

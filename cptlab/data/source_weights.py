"""Per-source weights within a domain (`data.domains.NAME.source_weights: {source: weight}`).

A domain's sources stay a list of strings; `source_weights` maps some of them (as written in `sources`) to a
weight, the others weigh 1. Each source then gets its exact share, weight / sum of weights, of the domain's rows:
the domain's n-th row goes to the source the apportionment (cptlab.data.apportion, one row per "step") picks, so a
source's cumulative rows stay within one row of share * the domain's rows at every step, whatever the domain's
rows per batch. Every source of a weighted domain is its own stream of blocks (its shards' train arrays in order,
a new keyed order every epoch); a domain without source weights is one stream over all its sources, as always.

The token caches know which shard came from which source (`train_sources` beside `train_files`), and weights are
no part of any cache key: re-weighting a domain's sources re-encodes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from fractions import Fraction

from cptlab.data.apportion import RowSchedule
from cptlab.data.stages import exact
from cptlab.errors import CptlabError


def resolve_source_weights(domain: str, sources: Sequence[str], weights: Mapping[str, float] | None,
                           role: str = "new") -> tuple[tuple[str, float], ...]:
    """((source, weight), ...) for every distinct source of the domain in order (unlisted ones weigh 1.0), or ()
    when the domain has no source weights; one line naming the key for a weight that names no source of the
    domain, a weight <= 0, or source weights on an eval domain (it is never trained on)."""
    if not weights:
        return ()
    key = f"data.domains.{domain}.source_weights"
    if role == "eval":
        raise CptlabError(f"{key}: domain '{domain}' has role eval and is never trained on: remove its source weights")
    for source, weight in weights.items():
        if source not in sources:
            raise CptlabError(f"{key}: {source!r} is not one of data.domains.{domain}.sources ({', '.join(sources)})")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0:
            raise CptlabError(f"{key}[{source!r}]={weight!r} must be > 0")
    return tuple((s, float(weights.get(s, 1.0))) for s in dict.fromkeys(sources))


class SourceSplit:
    """Rows of each source of one domain among the domain's first R rows (a pure function of R)."""

    def __init__(self, weights: Sequence[tuple[str, float]]):
        self.labels = [s for s, _ in weights]
        exact_weights = [exact(w) for _, w in weights]
        total = sum(exact_weights, Fraction(0))
        self.shares = [w / total for w in exact_weights]
        self._schedule = RowSchedule(self.shares, ["new"] * len(self.shares), batch_size=1)

    def rows(self, domain_rows: int) -> list[int]:
        """Rows of each source among the domain's rows [0, domain_rows); they sum to domain_rows."""
        return self._schedule.rows(domain_rows)

"""The learning-rate schedule and the learning-rate groups' scales: pure Python, no torch (the config's
validation builds them before torch loads; cptlab.training.optim drives the optimizer with them).

The schedule is a pure function of the optimizer step and the configured total (trainer.max_steps):
never of Lightning's estimated_stepping_batches, whose use drops the dataloader state on resume.
With `restarts` (schedule.rewarm) it starts over at each freezing-schedule stage: warm-up again, then the
schedule over the steps that remain.

`LRScale` holds `optim.lr_scale`: a multiplier of optim.lr for each of the groups `LR_GROUPS` (what the groups
are and how the optimizer applies them: cptlab.training.optim).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from cptlab.errors import CptlabError
from cptlab.utils.lr import wsd_decay_start

LR_GROUPS = ("embeddings", "lm_head", "new_rows", "rest")


@dataclass(frozen=True)
class LRScale:
    """Multipliers of optim.lr per parameter group (see cptlab.training.optim); 1.0 everywhere = one lr."""
    embeddings: float = 1.0
    lm_head: float = 1.0
    new_rows: float = 1.0
    rest: float = 1.0

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value <= 0:
                raise CptlabError(f"optim.lr_scale.{f.name}={value!r} must be a number > 0 (freeze a group with "
                                  f"the schedule instead)")
            object.__setattr__(self, f.name, float(value))

    def check_tied(self, tied: bool) -> None:
        """A model whose input and output matrices are one tensor has one scale for both."""
        if tied and self.embeddings != self.lm_head:
            raise CptlabError(f"optim.lr_scale.lm_head={self.lm_head} differs from optim.lr_scale.embeddings="
                              f"{self.embeddings}, but the model ties its input and output matrices (one tensor): "
                              f"set them equal")

    def __getitem__(self, group: str) -> float:
        return getattr(self, group)



@dataclass(frozen=True)
class LRSchedule:
    total_steps: int
    warmup_steps: int = 0
    kind: str = "cosine"
    min_lr_ratio: float = 0.1
    decay_fraction: float = 0.2
    # Steps at which the schedule starts over (warm-up, then decay over the remaining steps).
    restarts: tuple[int, ...] = ()

    def __post_init__(self):
        if self.kind not in _SHAPES:  # optim.schedule is checked by the run: a name with no shape below
            raise ValueError(f"unknown learning-rate schedule {self.kind!r} (optim.schedule)")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise CptlabError(f"optim.min_lr_ratio={self.min_lr_ratio} must be in [0, 1]")
        if not 0.0 <= self.decay_fraction <= 1.0:
            raise CptlabError(f"optim.decay_fraction={self.decay_fraction} must be in [0, 1]")
        if self.warmup_steps < 0:
            raise CptlabError(f"optim.warmup_steps={self.warmup_steps} must be >= 0")
        object.__setattr__(self, "restarts", tuple(int(r) for r in self.restarts))
        if any(r <= 0 for r in self.restarts) or list(self.restarts) != sorted(set(self.restarts)):
            raise CptlabError(f"LR schedule restarts {list(self.restarts)} must be increasing steps > 0")

    def factor(self, step: int) -> float:
        """Multiplier of the peak learning rate at optimizer step `step` (0-based)."""
        start = max((r for r in self.restarts if r <= step), default=0)
        return self._segment(step - start, self.total_steps - start)

    def _segment(self, step: int, total_steps: int) -> float:
        """The schedule over `total_steps` steps, at `step` steps into it."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        return _SHAPES[self.kind](self, step, total_steps)


def _constant(s: LRSchedule, step: int, total_steps: int) -> float:
    return 1.0


def _cosine(s: LRSchedule, step: int, total_steps: int) -> float:
    lo = s.min_lr_ratio
    progress = min(1.0, (step - s.warmup_steps) / max(1, total_steps - s.warmup_steps))
    return lo + (1.0 - lo) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _wsd(s: LRSchedule, step: int, total_steps: int) -> float:
    """Warm-up, a stable plateau, then a linear decay over the last decay_fraction of steps."""
    decay_start = wsd_decay_start(total_steps, s.warmup_steps, s.decay_fraction)
    if step < decay_start:
        return 1.0
    progress = min(1.0, (step - decay_start) / max(1, total_steps - decay_start))
    return 1.0 - (1.0 - s.min_lr_ratio) * progress


# The schedule after the warm-up, by optim.schedule's name: the multiplier of the peak learning rate at `step` of
# a segment of `total_steps` steps.
_SHAPES = {"constant": _constant, "cosine": _cosine, "wsd": _wsd}

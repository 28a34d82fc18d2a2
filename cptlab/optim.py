"""The one place that builds the optimizer and the learning-rate schedule.

The schedule is a pure function of the optimizer step and the configured total (trainer.max_steps):
never of Lightning's estimated_stepping_batches, whose use drops the dataloader state on resume.
With `restarts` (schedule.rewarm) it starts over at each freezing-schedule stage: warm-up again, then the
schedule over the steps that remain.

Row masking: `RowMaskedAdamW` updates only rows [start, n) of a row-masked matrix (the new token rows of
an embedding). The other rows are never read or written by the optimizer: no moment, no decoupled weight
decay, so they stay bitwise unchanged whatever the gradients, clipping or precision.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from cptlab.errors import CptlabError

SCHEDULES = ("cosine", "wsd", "constant")


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
        if self.kind not in SCHEDULES:
            raise CptlabError(f"optim.schedule={self.kind!r} is not one of {', '.join(SCHEDULES)}")
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
        lo = self.min_lr_ratio
        if self.kind == "constant":
            return 1.0
        if self.kind == "cosine":
            span = max(1, total_steps - self.warmup_steps)
            progress = min(1.0, (step - self.warmup_steps) / span)
            return lo + (1.0 - lo) * 0.5 * (1.0 + math.cos(math.pi * progress))
        # wsd: warm-up, a stable plateau, then a linear decay over the last decay_fraction of steps.
        decay_steps = max(1, round(self.decay_fraction * total_steps))
        decay_start = max(self.warmup_steps, total_steps - decay_steps)
        if step < decay_start:
            return 1.0
        progress = min(1.0, (step - decay_start) / max(1, total_steps - decay_start))
        return 1.0 - (1.0 - lo) * progress


def param_groups(model: torch.nn.Module | None, weight_decay: float, params=None) -> list[dict]:
    """Decay matrices only: norms, biases and other 1-D parameters are not decayed. `params` (an iterable
    of parameters, in a deterministic order) replaces "the model's parameters that require grad"."""
    if params is None:
        params = [p for p in model.parameters() if p.requires_grad]
    decay, no_decay = [], []
    for p in params:
        (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


class RowMaskedAdamW(torch.optim.AdamW):
    """AdamW where some matrices train only rows [start, n) (`row_starts`: parameter -> start).

    For the step, such a parameter's data and gradient are swapped for views of those rows, so AdamW
    keeps moments for the trainable rows only and its decoupled weight decay and update touch nothing
    else: the frozen rows are bitwise unchanged by construction (not by a zero gradient, which weight
    decay would ignore). The closure (forward, backward, clipping in Lightning) runs on the full tensors.
    """

    def __init__(self, params, *, row_starts: dict[torch.Tensor, int] | None = None, **kwargs):
        super().__init__(params, **kwargs)
        self.row_starts = {p: s for p, s in (row_starts or {}).items() if s > 0}

    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        swapped = []
        try:
            for p, start in self.row_starts.items():
                if p.grad is None:
                    continue
                full, grad = p.data, p.grad
                p.data = full[start:]
                p.grad = grad[start:]
                swapped.append((p, full, grad))
            super().step()
        finally:
            for p, full, grad in swapped:
                p.data = full
                p.grad = grad
        return loss


def build_optimizer(model: torch.nn.Module | None, *, lr: float, weight_decay: float, betas, eps: float,
                    fused: bool = False, params=None, row_starts: dict[torch.Tensor, int] | None = None
                    ) -> torch.optim.Optimizer:
    """AdamW over `params` (default: the model's parameters that require grad); `row_starts` row-masks
    matrices (see RowMaskedAdamW)."""
    groups = param_groups(model, weight_decay, params)
    if not groups:
        raise CptlabError("no trainable parameters: check schedule and adapter settings")
    kwargs = {"fused": True} if fused else {}
    return RowMaskedAdamW(groups, row_starts=row_starts, lr=lr, betas=tuple(betas), eps=eps, **kwargs)


def build_scheduler(optimizer: torch.optim.Optimizer, schedule: LRSchedule, start_step: int = 0):
    """LambdaLR driving the optimizer's learning rate by `schedule`, positioned at `start_step` (the
    learning rate of that step is set on the optimizer: used when an optimizer is rebuilt mid-run)."""
    if start_step <= 0:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule.factor)
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule.factor, last_epoch=start_step - 1)

"""The one place that builds the optimizer and the learning-rate schedule.

The schedule is a pure function of the optimizer step and the configured total (trainer.max_steps):
never of Lightning's estimated_stepping_batches, whose use drops the dataloader state on resume.
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

    def __post_init__(self):
        if self.kind not in SCHEDULES:
            raise CptlabError(f"optim.schedule={self.kind!r} is not one of {', '.join(SCHEDULES)}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise CptlabError(f"optim.min_lr_ratio={self.min_lr_ratio} must be in [0, 1]")
        if not 0.0 <= self.decay_fraction <= 1.0:
            raise CptlabError(f"optim.decay_fraction={self.decay_fraction} must be in [0, 1]")
        if self.warmup_steps < 0:
            raise CptlabError(f"optim.warmup_steps={self.warmup_steps} must be >= 0")

    def factor(self, step: int) -> float:
        """Multiplier of the peak learning rate at optimizer step `step` (0-based)."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        lo = self.min_lr_ratio
        if self.kind == "constant":
            return 1.0
        if self.kind == "cosine":
            span = max(1, self.total_steps - self.warmup_steps)
            progress = min(1.0, (step - self.warmup_steps) / span)
            return lo + (1.0 - lo) * 0.5 * (1.0 + math.cos(math.pi * progress))
        # wsd: warm-up, a stable plateau, then a linear decay over the last decay_fraction of steps.
        decay_steps = max(1, round(self.decay_fraction * self.total_steps))
        decay_start = max(self.warmup_steps, self.total_steps - decay_steps)
        if step < decay_start:
            return 1.0
        progress = min(1.0, (step - decay_start) / max(1, self.total_steps - decay_start))
        return 1.0 - (1.0 - lo) * progress


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices only: norms, biases and other 1-D parameters are not decayed."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(model: torch.nn.Module, *, lr: float, weight_decay: float, betas, eps: float,
                    fused: bool = False) -> torch.optim.Optimizer:
    groups = param_groups(model, weight_decay)
    if not groups:
        raise CptlabError("no trainable parameters: check schedule and adapter settings")
    kwargs = {"fused": True} if fused else {}
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, **kwargs)


def build_scheduler(optimizer: torch.optim.Optimizer, schedule: LRSchedule):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule.factor)

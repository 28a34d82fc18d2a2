"""Learning-rate schedule arithmetic shared by the config schema's `${lr_decay_start:}` resolver and the schedule
itself (cptlab.training.schedule.LRSchedule): torch-free and importing nothing of cptlab, so neither of the two
imports the other."""

from __future__ import annotations


def wsd_decay_start(total_steps: int, warmup_steps: int, decay_fraction: float) -> int:
    """The first step of the linear decay of optim.schedule=wsd: its last `decay_fraction` of `total_steps` (at
    least one step), never before the warm-up ends."""
    return max(warmup_steps, total_steps - max(1, round(decay_fraction * total_steps)))

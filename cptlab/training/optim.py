"""The one place that builds the optimizer and the learning-rate scheduler.

The schedule itself (`LRSchedule`, a pure function of the optimizer step) and the groups' scales (`LRScale`)
are torch-free, in cptlab.training.schedule; `build_scheduler` drives the optimizer's learning rate by it.

Row masking: `RowMaskedAdamW` updates only rows [start, n) of a row-masked matrix (the new token rows of
an embedding). The other rows are never read or written by the optimizer: no moment, no decoupled weight
decay, so they stay bitwise unchanged whatever the gradients, clipping or precision.

Learning-rate groups (`optim.lr_scale`): every trainable parameter belongs to one of `embeddings` (the
input matrix), `lm_head` (the output matrix), `new_rows` (the rows >= base_rows of both: the tokens a
vocabulary extension added) and `rest` (everything else: the body, norms, adapter weights, new blocks),
and its learning rate is `optim.lr * lr_scale[group] * schedule(step)`. Whole tensors get it as an AdamW
parameter group of their own (`lr` and `initial_lr` scaled, so the LambdaLR schedule, phase rebuilds and
resume carry the scale exactly). New rows live in the same tensor as the old rows, and a gradient scale
would not do (AdamW divides it out); two cases:

- the matrix trains row-masked (only its new rows train): the optimizer only ever sees those rows, so the
  tensor simply sits in a `new_rows` parameter group;
- the whole matrix trains, old and new rows: its group carries the larger of the two scales (the
  matrix's and new_rows), and after the AdamW step the update of the other block of rows (old rows
  [0, base_rows) or new rows [base_rows, n)) is multiplied by the ratio of the two, < 1 (`row_scales`).
  AdamW's step, `-lr * (m / (sqrt(v) + eps) + weight_decay * p)`, is linear in lr and its moments never
  see lr, so this is AdamW with each block's own learning rate, to within a rounding of the weights
  (shrinking the update, never enlarging it, keeps that rounding from growing).
"""

from __future__ import annotations

import torch

from cptlab.errors import CptlabError
from cptlab.training.schedule import LRScale, LRSchedule


def lr_groups(active: dict[str, int], shapes: dict[str, int], *, embeddings: str | None, lm_head: str | None,
              base_rows: int, scale: LRScale) -> dict[str, tuple[str, float, tuple[int, int, float] | None]]:
    """For each trainable parameter (`active`: name -> first trainable row, as freeze.FreezePlan gives it;
    `shapes`: name -> rows) its learning-rate group, the scale of its AdamW parameter group, and
    `(first row, end row, update ratio)` when a block of its rows needs its update rescaled after the step
    (None else). `embeddings` / `lm_head`: the names of the input and output matrix (equal when tied)."""
    scale.check_tied(embeddings is not None and embeddings == lm_head)
    out = {}
    for name, start in active.items():
        if name not in (embeddings, lm_head):
            out[name] = ("rest", scale.rest, None)
            continue
        group = "embeddings" if name == embeddings else "lm_head"
        if start > 0:  # row-masked: the optimizer sees only rows >= start, which are new rows
            if start < base_rows:
                raise CptlabError(f"{name}: trainable rows from {start} start below the new rows ({base_rows})")
            out[name] = ("new_rows", scale.new_rows, None)
        elif shapes[name] > base_rows and scale.new_rows != scale[group]:
            old, new = scale[group], scale.new_rows
            rows = (0, base_rows, old / new) if new > old else (base_rows, shapes[name], new / old)
            out[name] = (group, max(old, new), rows)
        else:
            out[name] = (group, scale[group], None)
    return out


def param_groups(model: torch.nn.Module | None, weight_decay: float, params=None,
                 lr_scales: dict[torch.Tensor, float] | None = None) -> list[dict]:
    """Decay matrices only: norms, biases and other 1-D parameters are not decayed. `params` (an iterable
    of parameters, in a deterministic order) replaces "the model's parameters that require grad".
    `lr_scales` (parameter -> multiplier of the learning rate, default 1) splits the groups further: one
    group per (scale, decay), each with its `lr_scale`, in order of first appearance; with one scale the
    groups are those of a single learning rate (so older checkpoints' optimizer states still fit)."""
    if params is None:
        params = [p for p in model.parameters() if p.requires_grad]
    groups: dict[tuple[float, bool], list] = {}
    for p in params:
        scale = float((lr_scales or {}).get(p, 1.0))
        groups.setdefault((scale, p.ndim >= 2), []).append(p)
    scales = list(dict.fromkeys(s for s, _ in groups))
    order = sorted(groups, key=lambda k: (not k[1], scales.index(k[0])))  # decayed first, as with one scale
    return [{"params": groups[k], "weight_decay": weight_decay if k[1] else 0.0, "lr_scale": k[0]} for k in order]


class RowMaskedAdamW(torch.optim.AdamW):
    """AdamW where some matrices train only rows [start, n) (`row_starts`: parameter -> start).

    For the step, such a parameter's data and gradient are swapped for views of those rows, so AdamW
    keeps moments for the trainable rows only and its decoupled weight decay and update touch nothing
    else: the frozen rows are bitwise unchanged by construction (not by a zero gradient, which weight
    decay would ignore). The closure (forward, backward, clipping in Lightning) runs on the full tensors.
    """

    def __init__(self, params, *, row_starts: dict[torch.Tensor, int] | None = None,
                 row_scales: dict[torch.Tensor, tuple[int, int, float]] | None = None, **kwargs):
        super().__init__(params, **kwargs)
        self.row_starts = {p: s for p, s in (row_starts or {}).items() if s > 0}
        # parameter -> (first row, end row, ratio): the update of those rows is multiplied by ratio (lr_groups)
        self.row_scales = {p: (int(a), int(b), float(q)) for p, (a, b, q) in (row_scales or {}).items() if q != 1.0}
        both = [p for p in self.row_scales if p in self.row_starts]
        if both:
            raise CptlabError("a parameter cannot be both row-masked and row-scaled")

    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        swapped = []
        before = {p: p.detach()[a:b].clone() for p, (a, b, _) in self.row_scales.items() if p.grad is not None}
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
        with torch.no_grad():
            for p, old in before.items():
                a, b, ratio = self.row_scales[p]
                rows = p.detach()[a:b]
                rows.copy_(torch.lerp(old, rows, ratio))  # old + ratio * (stepped - old)
        return loss


def build_optimizer(model: torch.nn.Module | None, *, lr: float, weight_decay: float, betas, eps: float,
                    fused: bool = False, params=None, row_starts: dict[torch.Tensor, int] | None = None,
                    lr_scales: dict[torch.Tensor, float] | None = None,
                    row_scales: dict[torch.Tensor, tuple[int, float]] | None = None) -> torch.optim.Optimizer:
    """AdamW over `params` (default: the model's parameters that require grad); `row_starts` row-masks
    matrices (see RowMaskedAdamW); `lr_scales` and `row_scales` set learning rates per parameter and per
    row block (see `lr_groups`)."""
    groups = param_groups(model, weight_decay, params, lr_scales)
    if not groups:
        raise CptlabError("no trainable parameters: check schedule and adapter settings")
    for g in groups:
        g["lr"] = lr * g["lr_scale"]
    kwargs = {"fused": True} if fused else {}
    return RowMaskedAdamW(groups, row_starts=row_starts, row_scales=row_scales, lr=lr, betas=tuple(betas), eps=eps,
                          **kwargs)


def base_lr(optimizer: torch.optim.Optimizer) -> float:
    """The unscaled learning rate the optimizer runs at now (optim.lr times the schedule)."""
    group = optimizer.param_groups[0]
    return group["lr"] / group.get("lr_scale", 1.0)


def build_scheduler(optimizer: torch.optim.Optimizer, schedule: LRSchedule, start_step: int = 0):
    """LambdaLR driving the optimizer's learning rate by `schedule`, positioned at `start_step` (the
    learning rate of that step is set on the optimizer: used when an optimizer is rebuilt mid-run)."""
    if start_step <= 0:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule.factor)
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule.factor, last_epoch=start_step - 1)

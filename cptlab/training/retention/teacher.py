"""Mean-teacher retention: the EMA weights act as a teacher, and the student pays
`retention.weight` x KL(teacher || student) on the token distributions of the chosen rows."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.func import functional_call


def kl_teacher_student(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """Mean over positions of KL(p_teacher || p_student), in nats (float32)."""
    t = F.log_softmax(teacher_logits.float(), dim=-1)
    s = F.log_softmax(student_logits.float(), dim=-1)
    return (t.exp() * (t - s)).sum(-1).mean()


class MeanTeacher:
    """Callable retention loss: `(model, batch, student_logits) -> KL` on the selected rows; `on` is one of
    the schema's RETENTION_ROWS (the config's rule refuses any other before the run starts)."""

    def __init__(self, ema, *, on: str = "replay"):
        self.ema, self.on = ema, on

    def rows(self, batch) -> torch.Tensor:
        if self.on == "all":
            return torch.ones_like(batch["is_replay"])
        return batch["is_replay"] if self.on == "replay" else ~batch["is_replay"]

    def __call__(self, model, batch, student_logits) -> torch.Tensor:
        rows = self.rows(batch)
        if not self.ema.shadow or not bool(rows.any()):
            return student_logits.new_zeros(())
        kwargs = {"input_ids": batch["input_ids"][rows]}
        if batch.get("position_ids") is not None:  # data.doc_masking: the student's segments and positions
            kwargs.update(position_ids=batch["position_ids"][rows], use_cache=False)
        with torch.no_grad():
            teacher = functional_call(model, self.ema.weights(model), args=(), kwargs=kwargs, strict=False).logits
        return kl_teacher_student(teacher, student_logits[rows])

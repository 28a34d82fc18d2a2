"""The LightningModule: causal-LM loss on mixture batches, the optimizer/schedule, and the counters
that make the data stream resumable (the stream is a pure function of the micro-batch index)."""

from __future__ import annotations

import pytorch_lightning as pl
import torch

from cptlab.evaluation import token_nll
from cptlab.optim import LRSchedule, build_optimizer, build_scheduler


class CPTModule(pl.LightningModule):
    def __init__(self, model: torch.nn.Module, *, lr: float, weight_decay: float, betas, eps: float,
                 schedule: LRSchedule):
        super().__init__()
        self.model = model
        self.lr, self.weight_decay, self.betas, self.eps = lr, weight_decay, list(betas), eps
        self.lr_schedule = schedule
        # Micro-batches consumed and replay rows among them, over all ranks (same on every rank).
        self.batches_done = 0
        self.rows_seen = 0
        self.replay_rows_seen = 0
        # Running train-loss sum since the last log, kept on device: no host sync per step.
        self.loss_sum = torch.zeros(())
        self.loss_count = 0

    def forward(self, input_ids):
        return self.model(input_ids=input_ids).logits

    def training_step(self, batch, batch_idx):
        if batch["step"] != self.batches_done:
            raise RuntimeError(f"data stream out of step: got batch {batch['step']}, expected {self.batches_done}")
        loss = token_nll(self.model, batch["input_ids"], batch["targets"]).mean()
        self.batches_done += 1
        self.rows_seen += batch["rows"]
        self.replay_rows_seen += batch["replay_rows"]
        self.loss_sum = self.loss_sum.to(loss.device) + loss.detach()
        self.loss_count += 1
        return loss

    def pop_train_loss(self) -> torch.Tensor | None:
        """Mean train loss since the last call (a device tensor), reset for the next interval."""
        if self.loss_count == 0:
            return None
        mean = self.loss_sum / self.loss_count
        self.loss_sum, self.loss_count = torch.zeros((), device=mean.device), 0
        return mean

    @property
    def replay_share(self) -> float:
        return self.replay_rows_seen / self.rows_seen if self.rows_seen else 0.0

    def configure_optimizers(self):
        fused = self.device.type == "cuda"
        opt = build_optimizer(self.model, lr=self.lr, weight_decay=self.weight_decay, betas=self.betas,
                              eps=self.eps, fused=fused)
        return {"optimizer": opt,
                "lr_scheduler": {"scheduler": build_scheduler(opt, self.lr_schedule), "interval": "step"}}

    def on_save_checkpoint(self, checkpoint):
        checkpoint["cptlab"] = {"batches_done": self.batches_done, "rows_seen": self.rows_seen,
                                "replay_rows_seen": self.replay_rows_seen}

    def on_load_checkpoint(self, checkpoint):
        state = checkpoint.get("cptlab", {})
        self.batches_done = state.get("batches_done", 0)
        self.rows_seen = state.get("rows_seen", 0)
        self.replay_rows_seen = state.get("replay_rows_seen", 0)

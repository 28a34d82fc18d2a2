"""An exponential moving average of the trainable weights, as a callback: updated after optimizer steps,
kept in the checkpoint (exact resume), swapped in for `val_ema/...` evaluation and for export.
Only parameters that some phase trains are averaged, so under LoRA the copy is small."""

from __future__ import annotations

from contextlib import contextmanager

import pytorch_lightning as pl
import torch

PREFIX = "model."  # CPTModule keeps the network as `self.model`


class EMA(pl.Callback):
    def __init__(self, decay: float, every_n_steps: int = 1, names: list[str] | None = None):
        self.decay, self.every, self.names = decay, every_n_steps, names
        self.shadow: dict[str, torch.Tensor] = {}
        self.last_step = 0

    def init_from(self, model: torch.nn.Module) -> None:
        params = dict(model.named_parameters())
        names = self.names if self.names is not None else [n for n, p in params.items() if p.requires_grad]
        self.shadow = {n: params[n].detach().clone().float() for n in names}

    def on_train_start(self, trainer, pl_module):
        if not self.shadow:
            self.init_from(pl_module.model)
        else:  # restored from a checkpoint: follow the model's device
            device = next(pl_module.model.parameters()).device
            self.shadow = {n: t.to(device) for n, t in self.shadow.items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        params = dict(model.named_parameters())
        for name, avg in self.shadow.items():
            avg.mul_(self.decay).add_(params[name].detach().float(), alpha=1.0 - self.decay)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step  # optimizer steps taken; once per step also under accumulation
        if step != self.last_step and step % self.every == 0:
            self.update(pl_module.model)
        self.last_step = step

    def weights(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The averaged parameters, cast to the model's dtypes (for torch.func.functional_call)."""
        params = dict(model.named_parameters())
        return {n: t.to(params[n].dtype) for n, t in self.shadow.items()}

    @contextmanager
    def swapped(self, model: torch.nn.Module):
        """The model with the EMA weights in place (restored afterwards, bit for bit)."""
        params = dict(model.named_parameters())
        saved = {n: params[n].detach().clone() for n in self.shadow}
        with torch.no_grad():
            for n, t in self.shadow.items():
                params[n].copy_(t)
        try:
            yield model
        finally:
            with torch.no_grad():
                for n, t in saved.items():
                    params[n].copy_(t)

    # The averaged weights go into the checkpoint in the shape cptlab-export reads
    # (checkpoint["cptlab"]["ema"]["state_dict"], keyed like the module's state dict).

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        checkpoint.setdefault("cptlab", {})["ema"] = {
            "state_dict": {PREFIX + n: t.detach().cpu().clone() for n, t in self.shadow.items()},
            "last_step": self.last_step}

    def on_load_checkpoint(self, trainer, pl_module, checkpoint):
        state = checkpoint.get("cptlab", {}).get("ema")
        if state is not None:
            self.shadow = {k[len(PREFIX):]: t.clone() for k, t in state["state_dict"].items()}
            self.last_step = state["last_step"]

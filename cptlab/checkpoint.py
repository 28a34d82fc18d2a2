"""Checkpoint files written to a temporary name and renamed into place, so a write interrupted
half-way never leaves a `last.ckpt` that fails to load; and the lookup of the checkpoint to resume."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint, path, storage_options=None):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            torch.save(checkpoint, tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


def resume_checkpoint(run_dir: Path) -> Path | None:
    last = Path(run_dir) / "checkpoints" / "last.ckpt"
    return last if last.is_file() else None

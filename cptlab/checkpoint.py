"""Checkpoint files written to a temporary name and renamed into place, so a write interrupted
half-way never leaves a `last.ckpt` that fails to load; and the lookup of the checkpoint to resume."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from cptlab.errors import CptlabError
from cptlab.run.layout import last_checkpoint


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


def resume_checkpoint(run_dir: Path, module: torch.nn.Module | None = None) -> Path | None:
    """The run's checkpoint to resume from, or None. A damaged file, or one whose tensors do not fit `module`
    (the LightningModule about to load it), is refused with one line naming it (instead of the unpickler's
    or load_state_dict's pages of text)."""
    last = last_checkpoint(run_dir)
    if not last.is_file():
        return None
    how = ("delete it to start the run again from step 0 (or its run directory), or use a new run directory "
           "(hydra.run.dir=...)")
    try:  # memory-mapped: reads the index, not the tensors (Lightning then loads it for real)
        checkpoint = torch.load(last, map_location="cpu", weights_only=False, mmap=True)
    except Exception as err:
        reason = " ".join(str(err).split())[:160] or type(err).__name__
        raise CptlabError(f"{last} is damaged (cannot be read: {reason}); {how}") from None
    if not isinstance(checkpoint, dict) or "global_step" not in checkpoint:
        raise CptlabError(f"{last} is not a cptlab training checkpoint; {how}")
    if module is not None:
        mismatch = shape_mismatch(checkpoint, module)
        if mismatch:
            raise CptlabError(f"{last} does not fit this run's model: {mismatch} (the model, tokenizer or adapter "
                              f"config changed since it was written); {how}")
    return last


def shape_mismatch(checkpoint: dict, module: torch.nn.Module) -> str | None:
    """The first tensor of the checkpoint that this module has not, or has in another shape; None if all fit."""
    state = checkpoint.get("state_dict")
    if not isinstance(state, dict):
        return None  # a sharded (FSDP) checkpoint: its loader checks it
    own = module.state_dict()
    for key, tensor in state.items():
        if not hasattr(tensor, "shape"):
            continue
        if key not in own:
            return f"it holds {key}, which this model has not"
        if tuple(own[key].shape) != tuple(tensor.shape):
            return f"{key} is {tuple(tensor.shape)} there and {tuple(own[key].shape)} here"
    prefix = "model."
    params = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in own.items()}
    for key, entry in checkpoint.get("cptlab", {}).get("rows", {}).items():
        name = key[len(prefix):] if key.startswith(prefix) else key
        from cptlab.model.freeze import clean_name

        p = params.get(name, params.get(clean_name(name)))
        if p is None:
            return f"it holds rows of {name}, which this model has not"
        block = entry["rows"]
        if p.shape[0] - entry["start"] != block.shape[0] or tuple(p.shape[1:]) != tuple(block.shape[1:]):
            return (f"the rows of {name} are {tuple(block.shape)} from row {entry['start']} there, the matrix is "
                    f"{tuple(p.shape)} here")
    return None

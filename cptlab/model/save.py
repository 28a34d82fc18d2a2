"""Write a trained model as a plain Hugging Face directory (weights + config + tokenizer), atomically."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from transformers import PreTrainedModel

from cptlab.utils.io import public_mode


def save_hf_model(model: PreTrainedModel, tokenizer_dir: Path, out_dir: Path) -> None:
    """`model.save_pretrained` + the tokenizer files, into `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model.config.use_cache = True  # generation-ready on reload
    try:
        model.save_pretrained(out_dir)
    finally:
        model.config.use_cache = False
    for f in Path(tokenizer_dir).iterdir():
        if f.is_file() and not f.name.startswith("."):
            shutil.copy2(f, out_dir / f.name)


def publish_model(model: PreTrainedModel, tokenizer_dir: Path, out_dir: Path) -> Path:
    """Replace `out_dir` with a fresh copy of the model, never leaving a half-written directory:
    build beside it, then swap it in with renames."""
    out_dir = Path(out_dir).expanduser()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        save_hf_model(model, tokenizer_dir, tmp)
        public_mode(tmp)
        old = None
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir

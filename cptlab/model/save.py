"""Write a trained model as a plain Hugging Face directory (weights + config + tokenizer), atomically."""

from __future__ import annotations

import shutil
from pathlib import Path

from transformers import PreTrainedModel

from cptlab.utils.io import replace_dir


def save_hf_model(model: PreTrainedModel, tokenizer_dir: Path, out_dir: Path) -> None:
    """`model.save_pretrained` + the tokenizer files, into `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model.config.use_cache = True  # generation-ready on reload
    try:
        model.save_pretrained(out_dir)
    finally:
        model.config.use_cache = False
    copy_tokenizer_files(tokenizer_dir, out_dir)


def copy_tokenizer_files(tokenizer_dir: Path, out_dir: Path) -> None:
    for f in Path(tokenizer_dir).iterdir():
        if f.is_file() and not f.name.startswith("."):
            shutil.copy2(f, out_dir / f.name)


def publish_model(model: PreTrainedModel, tokenizer_dir: Path, out_dir: Path) -> Path:
    """Replace `out_dir` with a fresh copy of the model, never leaving a half-written directory."""
    return replace_dir(out_dir, lambda tmp: save_hf_model(model, tokenizer_dir, tmp))

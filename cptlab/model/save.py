"""Write a trained model as a plain Hugging Face directory (weights + config + tokenizer), atomically."""

from __future__ import annotations

import shutil
from pathlib import Path

from transformers import PreTrainedModel

from cptlab.utils.io import atomic_write_json, replace_dir

# The train/held-out split the model was trained with (a run's summary.json "split"), beside its weights, so a
# run continued from it can refuse to evaluate on documents it trained on (cptlab.data.split.leaks_from_base).
SPLIT_FILE = "cptlab_split.json"


def save_hf_model(model: PreTrainedModel, tokenizer_dir: Path, out_dir: Path, split: dict | None = None) -> None:
    """`model.save_pretrained` + the tokenizer files (+ the split it was trained with), into `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model.config.use_cache = True  # generation-ready on reload
    try:
        model.save_pretrained(out_dir)
    finally:
        model.config.use_cache = False
    copy_tokenizer_files(tokenizer_dir, out_dir)
    if split:
        atomic_write_json(out_dir / SPLIT_FILE, split)


def copy_tokenizer_files(tokenizer_dir: Path, out_dir: Path) -> None:
    for f in Path(tokenizer_dir).iterdir():
        if f.is_file() and not f.name.startswith("."):
            shutil.copy2(f, out_dir / f.name)


def publish_model(model: PreTrainedModel, tokenizer_dir: Path, out_dir: Path, split: dict | None = None) -> Path:
    """Replace `out_dir` with a fresh copy of the model, never leaving a half-written directory."""
    return replace_dir(out_dir, lambda tmp: save_hf_model(model, tokenizer_dir, tmp, split), kind="model", what="publish_dir")

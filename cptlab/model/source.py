"""Where the base model comes from: a local Hugging Face directory or a hub id, checked before any work. Importing
this module loads neither torch nor transformers (cptlab.run.validate uses it): transformers is loaded only to read
a local base's config.json; cptlab.model.load builds the model."""

from __future__ import annotations

import json
import os
from pathlib import Path

from cptlab.errors import CptlabError


def looks_local(name_or_path: str) -> bool:
    """Whether `name_or_path` names a local directory rather than a hub id (`owner/name`)."""
    return name_or_path.startswith((".", "/", "~")) or os.path.exists(name_or_path) or name_or_path.count("/") != 1


def check_model_source(name_or_path: str) -> None:
    """Fail early, by path, on a missing or malformed local model directory: no config.json, one that is not a
    JSON object, or one transformers cannot read (an unknown model_type, a field its config class refuses)."""
    if not looks_local(name_or_path):
        return  # a hub id: from_pretrained reports (offline) failures itself
    path = Path(name_or_path).expanduser()
    if not path.is_dir():
        raise CptlabError(f"model directory not found: {path} (model.name_or_path)")
    config = path / "config.json"
    if not config.is_file():
        raise CptlabError(f"{path} is not a Hugging Face model directory: no config.json (model.name_or_path)")
    try:
        fields = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise CptlabError(f"{config}: cannot be read as a model config ({str(err).splitlines()[0]})") from None
    if not isinstance(fields, dict):
        raise CptlabError(f"{config}: cannot be read as a model config (not a JSON object)")
    from transformers import AutoConfig  # only here: it loads torch, which a config without a local base never needs

    try:
        AutoConfig.from_pretrained(path)
    except Exception as err:  # unknown model_type, ...
        raise CptlabError(f"{config}: cannot be read as a model config ({str(err).splitlines()[0]})") from None

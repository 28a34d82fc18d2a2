"""What every entry point shares at its edge: where the configs live, errors as one line, quiet libraries.

Library code may import this module; it never imports an entry point (cptlab.cli.train, cptlab.cli.train_app's main)."""

from __future__ import annotations

import importlib.resources
import logging
import os
import re
from pathlib import Path

# The configs: the top-level conf/ of the checkout, shipped in the wheel as the package cptlab.conf
# (pyproject.toml maps one onto the other), so an installed wheel composes the same configs as the checkout.
CONF_PACKAGE = "cptlab.conf"


def _conf_dir() -> Path:
    try:
        return Path(str(importlib.resources.files(CONF_PACKAGE)))
    except ModuleNotFoundError:  # an editable install of the checkout: setuptools maps top-level packages only
        return Path(__file__).resolve().parents[2] / "conf"


CONF_DIR = _conf_dir()


def one_line(err: BaseException) -> str:
    """The error and its cause as one line, without OmegaConf's `full_key:` detail block."""
    parts = []
    while err is not None and len(parts) < 3:
        text = str(err).split("\n    full_key:")[0].split("Config search path:")[0]
        text = re.sub(r"\s+", " ", text).strip()
        if text and text not in " ".join(parts):
            parts.append(text)
        err = err.__cause__
    return ": ".join(parts) or "unknown error"


def quiet_libraries() -> None:
    import warnings

    import transformers

    # Library deprecation chatter users cannot act on.
    # (peft still calls transformers' deprecated `is_gradient_checkpointing` when it wraps a model.)
    for pattern in (".*LeafSpec.*", ".*does not have many workers.*", ".*`isinstance\\(treespec.*",
                    ".*is_gradient_checkpointing.*"):
        warnings.filterwarnings("ignore", message=pattern)

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    # (the signal connector logs "Received SIGTERM" beside cptlab's own one-line report of it)
    for name in ("pytorch_lightning.utilities.rank_zero", "pytorch_lightning.accelerators.cuda", "lightning_fabric",
                 "pytorch_lightning.trainer.connectors.signal_connector"):
        logging.getLogger(name).setLevel(logging.WARNING)

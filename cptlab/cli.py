"""Command-line edges: compose-time errors turned into one line before Hydra starts, and quiet libraries."""

from __future__ import annotations

import logging
import os
import re
import sys
from pathlib import Path


CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
# Hydra flags after which the arguments are not plain overrides (help, info, other config dirs).
_PASSTHROUGH = ("--help", "-h", "--hydra-help", "--info", "-i", "--cfg", "-c", "--config-path", "-cp",
                "--config-name", "-cn", "--config-dir", "-cd", "--shell-completion", "-sc", "--resolve",
                "--package", "-p", "--version")


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


def first_sweep_point(overrides: list[str]) -> list[str]:
    """Each override with a sweep (`a=1,2`, `range(...)`) replaced by its first value."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    out = []
    for ov in OverridesParser.create().parse_overrides(overrides):
        if ov.is_sweep_override():
            first = next(iter(ov.sweep_string_iterator()))
            out.append(f"{ov.get_key_element()}={first}")
        else:
            out.append(ov.input_line)
    return out


def precheck_overrides(argv: list[str]) -> None:
    """Compose the config once with the command's overrides so that an unknown key, a wrong type or a
    missing group option fails with one line and no traceback."""
    if any(a.split("=")[0] in _PASSTHROUGH for a in argv):
        return
    overrides = [a for a in argv if a not in ("-m", "--multirun")]
    from hydra import compose, initialize_config_dir

    import cptlab.config  # noqa: F401  (schema and resolvers)

    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            compose("train", overrides=first_sweep_point(overrides))
    except Exception as err:  # Hydra/OmegaConf errors: the message is what the user needs
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"cptlab-train: error: {one_line(err)}", file=sys.stderr)
        sys.exit(2)


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
    for name in ("pytorch_lightning.utilities.rank_zero", "pytorch_lightning.accelerators.cuda", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)


def train_main() -> None:
    """The `cptlab-train` console script: config errors are reported before torch is even imported."""
    precheck_overrides(sys.argv[1:])
    from cptlab.train import FAILED_RUNS, hydra_main

    hydra_main()
    if FAILED_RUNS:
        print(f"cptlab-train: {len(FAILED_RUNS)} job(s) of the sweep failed:", file=sys.stderr)
        for line in FAILED_RUNS:
            print(f"  {line}", file=sys.stderr)
        sys.exit(1)

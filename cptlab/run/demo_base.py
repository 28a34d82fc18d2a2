"""The demo base model: where it is cached, its recipe (experiment=demo_base) and the smoke run's stand-in for it
while it is not built yet (a fresh machine, CI)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    return Path(os.environ.get("CPTLAB_CACHE", Path(os.environ.get("HOME", ".")) / ".cache" / "cptlab"))


def runs_dir() -> Path:
    return Path(os.environ.get("CPTLAB_RUNS", "runs"))


def demo_base_dir(cache: str | os.PathLike) -> Path:
    return Path(cache).expanduser() / "demo_base"


def stands_in(model, cache: str | os.PathLike) -> bool:
    """Whether `model` (the model config node) is a smoke run's random-init stand-in for the demo base: it
    asks for the demo base with `random_init` while the demo base is not built (a fresh machine, CI)."""
    if not (model.random_init and model.name_or_path and not model.gguf):
        return False
    base = demo_base_dir(cache)
    return Path(str(model.name_or_path)).expanduser() == base and not (base / "config.json").is_file()


def demo_base_config(cache: str | os.PathLike):
    """The composed config of `experiment=demo_base` with this run's cache: the recipe of the demo base,
    whose model config and tokenizer (the same cached build) stand in for the base before it is built."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from cptlab.utils.console import CONF_DIR

    if GlobalHydra.instance().is_initialized():  # inside cptlab-train: its own config search path
        cfg = compose(config_name="train", overrides=["experiment=demo_base"])
    else:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name="train", overrides=["experiment=demo_base"])
    cfg.paths.cache_dir = str(cache)
    return cfg

"""Checks on a composed config that run before any heavy work, each failing with one line that
names the key or path at fault (types and unknown keys are already caught by the schema)."""

from __future__ import annotations

import glob
from pathlib import Path

from omegaconf import DictConfig

from cptlab.errors import CptlabError
from cptlab.optim import LRSchedule

IMPLEMENTED = {"schedule": ("full",), "adapter": ("none",), "retention": ("none",), "optim": ("adamw",)}
TOKENIZER_KINDS = ("base", "train")
BAD_TEXT = ("replace", "skip", "error")


def _positive(cfg: DictConfig, *keys: str, minimum: int = 1) -> None:
    for key in keys:
        value = cfg
        for part in key.split("."):
            value = value[part]
        if value < minimum:
            raise CptlabError(f"{key}={value} must be >= {minimum}")


def _check_source(domain: str, source: str) -> None:
    if source.startswith(("demo:", "hf:")):
        return
    if any(ch in source for ch in "*?["):
        if not glob.glob(str(Path(source).expanduser())):
            raise CptlabError(f"data source not found: {source} (no file matches; data.domains.{domain}.sources)")
    elif not Path(source).expanduser().exists():
        raise CptlabError(f"data source not found: {source} (data.domains.{domain}.sources)")


def validate_data(data: DictConfig) -> None:
    if not data.domains:
        raise CptlabError("data.domains is empty: configure at least one domain with role 'new'")
    roles = {}
    for name, d in data.domains.items():
        if d.role not in ("new", "replay"):
            raise CptlabError(f"data.domains.{name}.role={d.role!r} must be 'new' or 'replay'")
        if not d.sources:
            raise CptlabError(f"data.domains.{name}.sources is empty")
        if d.heldout <= 0:
            raise CptlabError(f"data.domains.{name}.heldout={d.heldout} must be > 0 (a share < 1 or a count)")
        if d.weight <= 0:
            raise CptlabError(f"data.domains.{name}.weight={d.weight} must be > 0")
        for source in d.sources:
            _check_source(name, str(source))
        roles[name] = d.role
    if "new" not in roles.values():
        raise CptlabError("data.domains has no domain with role 'new'")
    if not 0.0 <= data.replay_ratio < 1.0:
        raise CptlabError(f"data.replay_ratio={data.replay_ratio} must be in [0, 1)")
    if data.replay_ratio > 0 and "replay" not in roles.values():
        raise CptlabError(f"data.replay_ratio={data.replay_ratio} but no domain has role 'replay'")
    if data.on_bad_text not in BAD_TEXT:
        raise CptlabError(f"data.on_bad_text={data.on_bad_text!r} must be one of {', '.join(BAD_TEXT)}")


def validate(cfg: DictConfig) -> None:
    for group, options in IMPLEMENTED.items():
        if cfg[group].name not in options:
            raise CptlabError(f"{group}={cfg[group].name} is not available (choose {', '.join(options)})")
    if cfg.tokenizer.kind not in TOKENIZER_KINDS:
        raise CptlabError(f"tokenizer.kind={cfg.tokenizer.kind!r} must be one of {', '.join(TOKENIZER_KINDS)}")
    if cfg.tokenizer.kind == "base" and not (cfg.tokenizer.path or cfg.model.name_or_path):
        raise CptlabError("tokenizer=base needs tokenizer.path or model.name_or_path (a random-init model has "
                          "no tokenizer: use tokenizer=train)")
    if not (cfg.model.name_or_path or cfg.model.config):
        raise CptlabError("set model.name_or_path (a model directory) or model.config (random init)")
    _positive(cfg, "data.seq_len", "data.batch_size", "trainer.max_steps", "trainer.accumulate_grad_batches",
              "trainer.log_every_n_steps", "eval.every_n_steps", "eval.max_blocks", "eval.batch_size",
              "checkpoint.every_n_steps", "data.num_proc")
    _positive(cfg, "data.num_workers", minimum=0)
    if cfg.data.max_docs is not None:
        _positive(cfg, "data.max_docs")
    if cfg.optim.lr <= 0:
        raise CptlabError(f"optim.lr={cfg.optim.lr} must be > 0")
    LRSchedule(total_steps=cfg.trainer.max_steps, warmup_steps=cfg.optim.warmup_steps, kind=cfg.optim.schedule,
               min_lr_ratio=cfg.optim.min_lr_ratio, decay_fraction=cfg.optim.decay_fraction)
    validate_data(cfg.data)

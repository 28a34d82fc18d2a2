"""Checks on a composed config that run before any heavy work, each failing with one line that
names the key or path at fault (types and unknown keys are already caught by the schema)."""

from __future__ import annotations

import glob
import json
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from cptlab.demo import stands_in
from cptlab.errors import CptlabError
from cptlab.fsdp import SHARDING
from cptlab.model.adapter import check_adapter_config, check_targets
from cptlab.model.freeze import phases_from_config
from cptlab.model.gguf import check_gguf
from cptlab.model.load import check_model_source, random_llama_config
from cptlab.optim import LRScale, LRSchedule
from cptlab.utils.io import check_replaceable

IMPLEMENTED = {"schedule": ("full", "two_stage", "new_tokens_only", "phases"),
               "adapter": ("none", "lora", "dora", "block_expansion"),
               "retention": ("none", "ema", "mean_teacher"), "optim": ("adamw",)}
TOKENIZER_KINDS = ("base", "train", "extend")
INITS = ("random", "mean", "subword_mean")
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


def validate_schedule_and_adapter(cfg: DictConfig) -> None:
    """Freezing schedule and adapter settings that need no model (the model-dependent checks, e.g. a
    target module or a layer that does not exist, run when the model is built)."""
    phases = phases_from_config(cfg.schedule)
    check_adapter_config(cfg.adapter)
    if cfg.adapter.name != "none" and not any(g in ("adapter", "all") or g.startswith("layers.")
                                               for p in phases for g in p.train):
        raise CptlabError(f"adapter={cfg.adapter.name} but schedule={cfg.schedule.name} never trains the adapter "
                          f"(no phase has the group 'adapter'): use adapter=none or another schedule")


def validate_model(cfg: DictConfig) -> None:
    """The model directory exists and parses, and data.seq_len fits its positions: read from
    config.json (or the random-init config) before any tokenizer or data work."""
    if cfg.model.gguf:  # the file and the `gguf` package are there (its positions are checked once converted)
        check_gguf(str(cfg.model.gguf))
        limit = None
    elif cfg.model.name_or_path and not stands_in(cfg.model, cfg.paths.cache_dir):
        path = Path(str(cfg.model.name_or_path)).expanduser()
        if path.name == "demo_base" and not path.exists():
            raise CptlabError(f"the demo base model is not built yet ({path}): run `make demo` or "
                              "`cptlab-train experiment=demo_base` first")
        check_model_source(str(cfg.model.name_or_path))
        limit = None
        if (path / "config.json").is_file():
            limit = json.loads((path / "config.json").read_text(encoding="utf-8")).get("max_position_embeddings")
    else:
        limit = (cfg.model.config or {}).get("max_position_embeddings")
    if limit is not None and cfg.data.seq_len > limit:
        raise CptlabError(f"data.seq_len={cfg.data.seq_len} exceeds the model's maximum positions ({limit})")


def validate_adapter_targets(cfg: DictConfig) -> None:
    """adapter.target_modules name modules of the model: checked on a weightless (meta-device) copy built from
    its config, so a typo fails before the tokenizer and the token caches are built (a hub id: at load time)."""
    if cfg.adapter.name not in ("lora", "dora") or cfg.model.gguf:  # a GGUF base: checked when the converted model is built
        return
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if cfg.model.name_or_path:
        path = Path(str(cfg.model.name_or_path)).expanduser()
        if not (path / "config.json").is_file():
            return
        config = AutoConfig.from_pretrained(path)
    else:
        fields = OmegaConf.to_container(cfg.model.config, resolve=True)
        config = random_llama_config(fields, vocab_size=256, bos_id=None, eos_id=None)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    check_targets(skeleton, [str(t) for t in cfg.adapter.target_modules])


def validate_expansion(cfg: DictConfig) -> None:
    """adapter=block_expansion: adapter.blocks / adapter.placement fit the model's blocks (model.config's
    num_hidden_layers, else the base's config.json), before the tokenizer and the token caches are built."""
    if cfg.adapter.name != "block_expansion":
        return
    from cptlab.model.expand import insert_after

    layers = (cfg.model.config or {}).get("num_hidden_layers") if (cfg.model.get("random_init") or
                                                                   not cfg.model.name_or_path) else None
    if layers is None and cfg.model.name_or_path:
        path = Path(str(cfg.model.name_or_path)).expanduser() / "config.json"
        if path.is_file():
            layers = json.loads(path.read_text(encoding="utf-8")).get("num_hidden_layers")
    if layers:
        insert_after(int(layers), int(cfg.adapter.blocks), cfg.adapter.placement)


def _check_extension(tok: DictConfig) -> None:
    """tokenizer.admit / tokenizer.add_pieces: known values, and only where they act (tokenizer=extend)."""
    from cptlab.tokenizer.extend import check_admit

    check_admit(tok.get("admit", "auto"))
    add_pieces = tok.get("add_pieces")
    if add_pieces is None:
        return
    if tok.kind != "extend":
        raise CptlabError(f"tokenizer.add_pieces={add_pieces} only applies to tokenizer=extend (tokenizer.kind="
                          f"{tok.kind}); set tokenizer.vocab_size instead")
    if isinstance(add_pieces, bool) or not isinstance(add_pieces, int) or add_pieces < 1:
        raise CptlabError(f"tokenizer.add_pieces={add_pieces!r} must be a positive number of pieces (or null to "
                          "append every admitted piece of a tokenizer.vocab_size domain vocabulary)")


def validate(cfg: DictConfig) -> None:
    for group, options in IMPLEMENTED.items():
        if cfg[group].name not in options:
            raise CptlabError(f"{group}={cfg[group].name} is not available (choose {', '.join(options)})")
    if cfg.tokenizer.kind not in TOKENIZER_KINDS:
        raise CptlabError(f"tokenizer.kind={cfg.tokenizer.kind!r} must be one of {', '.join(TOKENIZER_KINDS)}")
    if cfg.tokenizer.kind in ("base", "extend") and not (cfg.tokenizer.path or cfg.model.name_or_path or cfg.model.gguf):
        raise CptlabError(f"tokenizer={cfg.tokenizer.kind} needs tokenizer.path or model.name_or_path (a random-init "
                          "model has no tokenizer: use tokenizer=train)")
    if cfg.tokenizer.init not in INITS:
        raise CptlabError(f"tokenizer.init={cfg.tokenizer.init!r} must be one of {', '.join(INITS)}")
    _check_extension(cfg.tokenizer)
    cap = cfg.tokenizer.get("max_train_bytes")
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
        raise CptlabError(f"tokenizer.max_train_bytes={cap!r} must be a number of bytes >= 1 (or null: no cap)")
    if not (cfg.model.name_or_path or cfg.model.config or cfg.model.gguf):
        raise CptlabError("set model.name_or_path (a model directory), model.gguf or model.config (random init)")
    _positive(cfg, "data.seq_len", "data.batch_size", "trainer.max_steps", "trainer.accumulate_grad_batches",
              "trainer.log_every_n_steps", "eval.every_n_steps", "eval.max_blocks", "eval.batch_size",
              "checkpoint.every_n_steps", "data.num_proc")
    _positive(cfg, "data.num_workers", minimum=0)
    if cfg.data.max_docs is not None:
        _positive(cfg, "data.max_docs")
    if cfg.train.nan_policy not in ("stop", "skip_batch"):
        raise CptlabError(f"train.nan_policy={cfg.train.nan_policy!r} must be 'stop' or 'skip_batch'")
    if cfg.optim.lr <= 0:
        raise CptlabError(f"optim.lr={cfg.optim.lr} must be > 0")
    LRSchedule(total_steps=cfg.trainer.max_steps, warmup_steps=cfg.optim.warmup_steps, kind=cfg.optim.schedule,
               min_lr_ratio=cfg.optim.min_lr_ratio, decay_fraction=cfg.optim.decay_fraction)
    LRScale.from_config(cfg.optim.get("lr_scale"))
    validate_schedule_and_adapter(cfg)
    validate_data(cfg.data)
    validate_model(cfg)
    validate_adapter_targets(cfg)
    validate_expansion(cfg)
    validate_strategy(cfg)
    validate_values(cfg)
    if cfg.publish_dir:  # a user's directory is never wiped at the end of a run: refused before any work
        check_replaceable(str(cfg.publish_dir), "model", "publish_dir")


PRECISIONS = ("16-mixed", "bf16-mixed", "32-true", "64-true", "16-true", "bf16-true", "transformer-engine",
              "transformer-engine-float16", "64", "32", "16", "bf16")
RETENTION_ROWS = ("replay", "all", "new")


def validate_values(cfg: DictConfig) -> None:
    """Values the libraries would reject only after the tokenizer, caches or ranks exist (or with a traceback
    that names no key): retention, dtype, optimizer, precision, SentencePiece coverage, batch vs. devices."""
    from cptlab.model.load import DTYPES

    ret, opt, tr = cfg.retention, cfg.optim, cfg.trainer
    if ret.name != "none":
        if not 0.0 < ret.decay < 1.0:
            raise CptlabError(f"retention.decay={ret.decay} must be in (0, 1)")
        _positive(cfg, "retention.every_n_steps")
    if ret.name == "mean_teacher":
        if ret.on not in RETENTION_ROWS:
            raise CptlabError(f"retention.on={ret.on!r} must be one of {', '.join(RETENTION_ROWS)}")
        if ret.weight <= 0:
            raise CptlabError(f"retention=mean_teacher needs retention.weight > 0 (got {ret.weight})")
    if cfg.model.dtype not in DTYPES:
        raise CptlabError(f"model.dtype={cfg.model.dtype!r} must be one of {', '.join(DTYPES)}")
    if cfg.model.get("chunked_loss") and (cfg.model.compile or tr.strategy == "fsdp"):
        # The chunked loss calls the decoder and the head itself, around the compiled (or FSDP-wrapped) model.
        raise CptlabError(f"model.chunked_loss=true does not combine with "
                          f"{'model.compile=true' if cfg.model.compile else 'trainer.strategy=fsdp'}: "
                          f"set one of them to false")
    betas = list(opt.betas)
    if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
        raise CptlabError(f"optim.betas={betas} must be two numbers in [0, 1)")
    if not opt.eps > 0:
        raise CptlabError(f"optim.eps={opt.eps} must be > 0")
    if opt.weight_decay < 0:
        raise CptlabError(f"optim.weight_decay={opt.weight_decay} must be >= 0")
    if opt.grad_clip is not None and opt.grad_clip <= 0:
        raise CptlabError(f"optim.grad_clip={opt.grad_clip} must be > 0 (or null: no clipping)")
    if str(tr.precision) not in PRECISIONS:
        raise CptlabError(f"trainer.precision={tr.precision!r} must be one of {', '.join(PRECISIONS[:6])}")
    if cfg.tokenizer.kind in ("train", "extend") and not 0.98 <= cfg.tokenizer.character_coverage <= 1.0:
        raise CptlabError(f"tokenizer.character_coverage={cfg.tokenizer.character_coverage} must be in [0.98, 1] "
                          "(SentencePiece's range)")
    _positive(cfg, "train.max_consecutive_skipped", "train.max_skipped_batches")
    if cfg.train.on_changed_inputs not in ("refuse", "restart", "resume"):
        raise CptlabError(f"train.on_changed_inputs={cfg.train.on_changed_inputs!r} must be refuse, restart or resume")
    devices = tr.devices
    world = len(devices) if OmegaConf.is_list(devices) else devices if isinstance(devices, int) and devices > 0 else None
    if world and cfg.data.batch_size % world:
        raise CptlabError(f"data.batch_size={cfg.data.batch_size} is not divisible by trainer.devices={world} "
                          "(each rank takes an equal share of every batch)")


def config_warnings(cfg: DictConfig) -> list[str]:
    """Settings that are legal but most likely not meant (printed once, the run goes on)."""
    out = []
    if cfg.optim.warmup_steps >= cfg.trainer.max_steps:
        out.append(f"optim.warmup_steps={cfg.optim.warmup_steps} >= trainer.max_steps={cfg.trainer.max_steps}: the "
                   "learning rate never reaches optim.lr (the whole run is warm-up)")
    return out


def validate_strategy(cfg: DictConfig) -> None:
    """What trainer.strategy=fsdp cannot do yet, said before any model is built."""
    tr = cfg.trainer
    if tr.strategy != "fsdp":
        return
    if tr.fsdp_sharding not in SHARDING:
        raise CptlabError(f"trainer.fsdp_sharding={tr.fsdp_sharding!r} must be one of {', '.join(SHARDING)}")
    if cfg.retention.name != "none":
        raise CptlabError(f"retention={cfg.retention.name} keeps an average of the weights, which FSDP shards: "
                          f"use trainer=ddp with retention, or retention=none with trainer=fsdp")

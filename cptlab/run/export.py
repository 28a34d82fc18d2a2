"""cptlab-export: a finished (or interrupted) run as a plain Hugging Face model directory.

    cptlab-export RUN_DIR --out DIR                   adapters merged: AutoModelForCausalLM + AutoTokenizer
    cptlab-export RUN_DIR --out DIR --adapter-only    the peft adapter (PeftModel.from_pretrained on the base)
    python -m cptlab.run.export ...                       the same

The model is rebuilt the way the run built it -- from RUN_DIR/.hydra/config.yaml and the run's tokenizer
(RUN_DIR/tokenizer) through `pipeline.build_model` (base weights, vocabulary growth, adapter) -- and the
checkpoint RUN_DIR/checkpoints/last.ckpt (which holds only what the run trained) is applied on top.

`--adapter-only` writes the LoRA/DoRA weights and, when the run trained new token rows, those rows as
peft `trainable_token_indices` (or the whole matrices as `modules_to_save` when old rows trained too); load
it with `PeftModel.from_pretrained(base, DIR)` where `base` is the extended base model (`build_base(RUN_DIR)`).

`weights` selects which weights to export: "raw" (the trained weights) or "ema" (the EMA copy a run with
retention=ema keeps; see `select_weights`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from cptlab.errors import CptlabError
from cptlab.model.export import adapter_copy, merged_model
from cptlab.model.save import copy_tokenizer_files, save_hf_model
from cptlab.run.plan_values import freeze_plan, parts_of
from cptlab.rundir import layout
from cptlab.utils.io import check_replaceable, replace_dir

WEIGHTS = ("raw", "ema")


@dataclass
class TrainedRun:
    run_dir: Path
    cfg: DictConfig
    tokenizer_dir: Path
    model: torch.nn.Module  # the trained model: a peft model with adapters, or the plain HF model
    base_rows: int
    checkpoint: dict


# -- loading ------------------------------------------------------------------------------------------


def load_run_config(run_dir: Path) -> DictConfig:
    path = Path(run_dir) / layout.CONFIG
    if not path.is_file():
        raise CptlabError(f"{path} not found: {run_dir} is not a cptlab run directory")
    import cptlab.config as schema  # noqa: F401  (resolvers)

    cfg = OmegaConf.load(path)
    try:  # fill keys that newer versions added, with their defaults
        cfg = OmegaConf.merge(OmegaConf.structured(schema.TrainConfig), cfg)
    except Exception:  # a config the schema no longer describes: use it as written
        pass
    with open_dict(cfg):
        cfg.paths.output_dir = str(run_dir)  # `${hydra:runtime.output_dir}` outside Hydra
    return cfg


def _tokenizers(cfg: DictConfig, run_dir: Path):
    from cptlab.tokenizer.hf import load_tokenizer

    tokenizer_dir = run_dir / layout.TOKENIZER
    if not tokenizer_dir.is_dir():
        raise CptlabError(f"{tokenizer_dir} not found: the run has no tokenizer (did it start training?)")
    base_tokenizer = None
    if cfg.tokenizer.kind == "extend":
        from cptlab.run import pipeline

        base_dir = run_dir / layout.TOKENIZER_BASE
        base_tokenizer = load_tokenizer(base_dir if base_dir.is_dir()
                                        else pipeline.build_base_tokenizer(parts_of(cfg), run_dir))
    return tokenizer_dir, load_tokenizer(tokenizer_dir), base_tokenizer


def build_base(run_dir: Path | str, *, adapter: bool = False):
    """The run's model before training: the base (grown for an extended tokenizer), without the adapter
    unless `adapter`. The base an `--adapter-only` export loads onto."""
    from cptlab.run import pipeline

    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    if not adapter:
        with open_dict(cfg):
            cfg.adapter.name = "none"
    _, tokenizer, base_tokenizer = _tokenizers(cfg, run_dir)
    model, _ = pipeline.build_model(parts_of(cfg), tokenizer, base_tokenizer, adapter=cfg.adapter)
    return model


def select_weights(checkpoint: dict, weights: str) -> dict:
    """The checkpoint-shaped weights to export ({"state_dict": ..., "cptlab": {"rows": ...}}).

    Hook for retention=ema: such a run stores its EMA weights in the same shape under
    checkpoint["cptlab"]["ema"] -- {"state_dict": {"model.<param name>": tensor}, "cptlab": {"rows": {...}}},
    the EMA of the parameters the run trains (the frozen rest equals the base, which the rebuilt model
    already holds); "ema" exports those."""
    if weights not in WEIGHTS:
        raise CptlabError(f"weights={weights!r} is not one of {', '.join(WEIGHTS)}")
    if weights == "raw":
        return checkpoint
    ema = checkpoint.get("cptlab", {}).get("ema")
    if ema is None:
        raise CptlabError("--weights ema: the run kept no EMA weights (train it with retention=ema)")
    return ema


def check_finished(run_dir: Path, *, allow_incomplete: bool = False) -> str | None:
    """Refuse (one line naming the run directory and its status) a run whose summary.json says it did not
    complete (failed, interrupted): its last checkpoint is some step short of the configured run, and an export
    or a merge of it would pass for the trained model. `allow_incomplete` takes it anyway. Returns a warning for
    a run without summary.json (killed before it wrote one, or still running), which is exported as it is."""
    from cptlab.rundir.summary import read_summary

    summary = read_summary(run_dir)
    if summary is None:
        return (f"{run_dir} has no {layout.SUMMARY} (killed before its end, or still running): using its last "
                "checkpoint as it is")
    status = summary.get("status")
    if status == "completed" or allow_incomplete:
        return None
    error = " ".join(str(summary.get("error") or "").split())
    error = f": {error[:157]}..." if len(error) > 160 else f": {error}" if error else ""
    raise CptlabError(f"{run_dir} did not complete ({layout.SUMMARY}: status {status}{error}); re-run its training "
                      "command to finish it, or pass --allow-incomplete to use its last checkpoint anyway")


def load_trained(run_dir: Path | str, *, weights: str = "raw") -> TrainedRun:
    """The run's model with its checkpoint's weights."""
    from cptlab.run import pipeline
    from cptlab.training.module import load_trained_weights

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CptlabError(f"run directory not found: {run_dir}")
    cfg = load_run_config(run_dir)
    ckpt_path = layout.last_checkpoint(run_dir)
    if not ckpt_path.is_file():
        raise CptlabError(f"{ckpt_path} not found: the run has no checkpoint yet")
    tokenizer_dir, tokenizer, base_tokenizer = _tokenizers(cfg, run_dir)
    from cptlab.training.checkpoint import load_checkpoint_file

    checkpoint = load_checkpoint_file(ckpt_path)  # weights only: a foreign pickle is refused, never run
    model, base_rows = pipeline.build_model(parts_of(cfg), tokenizer, base_tokenizer, adapter=cfg.adapter)
    saved_rows = checkpoint.get("cptlab", {}).get("base_rows", base_rows)
    if saved_rows != base_rows:
        raise CptlabError(f"{ckpt_path} was trained with {saved_rows} base embedding rows, the model rebuilt from the "
                          f"run's config has {base_rows}: its base model or tokenizer changed since")
    load_trained_weights(model, select_weights(checkpoint, weights))
    bad = next((name for name, p in model.named_parameters() if not torch.isfinite(p).all()), None)
    if bad is not None:
        raise CptlabError(f"{ckpt_path} holds non-finite weights ({bad}): the run diverged; nothing was exported")
    model.eval()
    return TrainedRun(run_dir, cfg, tokenizer_dir, model, base_rows, checkpoint)


# -- merged / adapter-only ----------------------------------------------------------------------------


def adapter_model(run: TrainedRun, base: torch.nn.Module | None = None):
    """A fresh peft model on the extended base (`build_base(run.run_dir)` unless given) holding the run's
    trained adapter and what its schedule trained of the embedding/output matrices (cptlab.model.export)."""
    plan = freeze_plan(run.model, run.cfg.schedule, run.cfg.adapter)
    return adapter_copy(run.model, plan, run.base_rows, lambda: base if base is not None else build_base(run.run_dir),
                        adapter_name=str(run.cfg.adapter.name))


# -- writing ------------------------------------------------------------------------------------------


def _write_atomically(out: Path, write) -> Path:
    """Build the directory beside `out`, then swap it in; never replace a directory that is not an export."""
    return replace_dir(out, write, kind="model", what="--out")


def export_run(run_dir: Path | str, out: Path | str, *, adapter_only: bool = False, weights: str = "raw",
               split: dict | None = None) -> Path:
    """Write the run's model to `out` (merged HF model, or the peft adapter with `adapter_only`) with the
    run's tokenizer and its train/held-out split (`split`, default: the run's summary.json). Returns `out`."""
    check_replaceable(out, "model", "--out", inputs=layout.input_paths(run_dir))  # before the model is built
    run = load_trained(run_dir, weights=weights)
    if adapter_only:
        peft_model = adapter_model(run)

        def write(tmp: Path) -> None:
            # The base it loads onto is the extended one: no copy of its embedding matrices.
            peft_model.save_pretrained(tmp, save_embedding_layers=False)
            copy_tokenizer_files(run.tokenizer_dir, tmp)
    else:
        model = merged_model(run.model)

        from cptlab.rundir.summary import read_summary

        if split is None:  # the split travels with the weights (cptlab_split.json)
            split = (read_summary(Path(run_dir)) or {}).get("split")

        def write(tmp: Path) -> None:
            save_hf_model(model, run.tokenizer_dir, tmp, split)
    return _write_atomically(Path(out), write)

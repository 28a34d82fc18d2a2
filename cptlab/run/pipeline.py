"""The steps of a run between its plan and fit: tokenizer, data, model, and the Lightning objects.

The tokenizer, data and model steps take the plan's typed parts (cptlab.run.plan_values: TokenizerPlan,
DataPlan, ModelPlan); the Lightning step takes the RunPlan, reading its optimizer, evaluation and retention
groups' own nodes. Each calls library code with plain arguments, or with one group's own node (adapter).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import hydra
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint

from cptlab.data.datamodule import CPTDataModule
from cptlab.data.mixture import MixtureSampler, eval_blocks
from cptlab.data.split import check_eval_overlap, leaks_from_base
from cptlab.data.tokens import DomainTokens, documents_key, prepare_domain, train_documents
from cptlab.errors import CptlabError
from cptlab.model.adapter import apply_adapter
from cptlab.model.doc_mask import check_doc_masking
from cptlab.model.freeze import FreezePlan
from cptlab.model.gguf import converted_dir, locate
from cptlab.model.load import load_model, max_positions
from cptlab.model.resize import grow_embeddings
from cptlab.model.save import SPLIT_FILE
from cptlab.run.plan_values import DataPlan, ModelPlan, Parts, train_new_tokens_of
from cptlab.run.validate import RunPlan
from cptlab.rundir import layout
from cptlab.tokenizer.byte_lengths import token_byte_lengths
from cptlab.tokenizer.hf import load_tokenizer
from cptlab.tokenizer.prepare import prepare_tokenizer
from cptlab.tokenizer.report import tokens_per_char
from cptlab.training.callbacks import PeriodicEval, PreemptionCheckpoint, TrainMetrics
from cptlab.training.checkpoint import AtomicCheckpointIO
from cptlab.training.fsdp import fsdp_strategy, replicated_params
from cptlab.training.harness_eval import HarnessEval, build_harness_eval
from cptlab.training.module import CPTModule
from cptlab.training.retention.ema import EMA
from cptlab.training.retention.teacher import MeanTeacher
from cptlab.utils.hashing import hash_dir, hash_obj
from cptlab.utils.io import atomic_write_json, build_once


def show_progress() -> bool:
    return sys.stderr.isatty() and os.environ.get("CI", "").lower() != "true"


def _train_docs(data: DataPlan, role: str | None = None):
    """The train-split documents of the domains (of one role), streamed domain by domain, each domain's cut at
    tokenizer.max_train_bytes: tokenizer training never holds a corpus in memory."""
    def docs():
        for spec in data.of_role(role):
            yield from train_documents(spec, on_bad_text=data.on_bad_text, seed=data.split_seed,
                                       max_bytes=data.max_train_bytes)
    return docs


def _train_docs_key(data: DataPlan, role: str | None = None) -> str:
    """What identifies those documents without reading them (the shared tokenizer cache's key)."""
    return hash_obj({"max_train_bytes": data.max_train_bytes,
                     "domains": [documents_key(spec, seed=data.split_seed, on_bad_text=data.on_bad_text)
                                 for spec in data.of_role(role)]})


def base_tokenizer_source(parts: Parts, run_dir: Path | None = None) -> str | None:
    """The base tokenizer: tokenizer.path, else the base model's directory (model.gguf's converted one). A
    stand-in for a base not built yet (the config's `stand_in`: cptlab.run.plan_values.stand_in_of) uses the
    tokenizer its recipe trains, through the same cached build as the base's own run (into run_dir/stand_in)."""
    tok, model = parts.tokenizer, parts.model
    if tok.path:
        return tok.path
    if model.gguf and tok.kind == "extend":  # the GGUF's own vocabulary (cptlab.tokenizer.gguf)
        return str(locate(model.gguf))
    if model.gguf:
        return str(converted_dir(model.gguf, model.cache_dir, weights=not model.random_init))
    if run_dir is not None and model.stand_in is not None:
        return str(build_tokenizer(model.stand_in.recipe, Path(run_dir) / "stand_in"))
    return model.name_or_path


def model_source(model: ModelPlan) -> tuple[str | None, dict | None]:
    """(name_or_path, config fields) that load_model builds the base from: model.gguf's converted directory,
    or for a stand-in (the config's `stand_in`) no directory and its recipe's model config under model.config."""
    if model.gguf:  # random_init needs the architecture only: no weights are converted for it
        return str(converted_dir(model.gguf, model.cache_dir, weights=not model.random_init)), model.fields
    if model.stand_in is not None:
        return None, model.stand_in.fields
    return model.name_or_path, model.fields


def build_tokenizer(parts: Parts, run_dir: Path) -> Path:
    """The run's tokenizer directory (run_dir/tokenizer): the base model's, a freshly trained one, or
    the base extended with a vocabulary trained on the new-role domains' train split."""
    tok, data = parts.tokenizer, parts.data
    role = "new" if tok.kind == "extend" else None
    return prepare_tokenizer(tok.kind, run_dir / layout.TOKENIZER, cache_root=data.cache_dir,
                             source=base_tokenizer_source(parts, run_dir), texts=_train_docs(data, role),
                             texts_key=_train_docs_key(data, role),
                             base_texts=_train_docs(data, "replay") if tok.kind == "extend" else None,
                             base_texts_key=_train_docs_key(data, "replay") if tok.kind == "extend" else None,
                             add_pieces=tok.add_pieces, admit=tok.admit, vocab_size=tok.vocab_size,
                             model_type=tok.model_type, character_coverage=tok.character_coverage,
                             seed=data.split_seed)


def build_base_tokenizer(parts: Parts, run_dir: Path) -> Path | None:
    """The base model's own tokenizer (run_dir/tokenizer_base) when the run changes the vocabulary."""
    if parts.tokenizer.kind != "extend":
        return None
    return prepare_tokenizer("base", run_dir / layout.TOKENIZER_BASE, cache_root=parts.data.cache_dir,
                             source=base_tokenizer_source(parts, run_dir))


def tokenizer_stats(data: DataPlan, tokenizer_dir: Path, base_dir: Path | None, max_docs: int = 2000,
                    domains: list[DomainTokens] | None = None) -> dict[str, dict]:
    """Tokens per character of each domain's held-out text, for the base and the final tokenizer.
    Built once in the shared cache (keyed by the sources' fingerprints and the tokenizers' files), so a
    warm start of a sweep job reads no document. The held-out text (small) comes from the token caches
    (`domains`, else `build_data`, whose caches the run then reuses): no extra pass over the corpus."""
    key = hash_obj({"version": 1, "max_docs": max_docs, "tokenizers": [hash_dir(d) for d in (tokenizer_dir, base_dir) if d],
                    "domains": {spec.name: documents_key(spec, seed=data.split_seed, on_bad_text=data.on_bad_text)
                                for spec in data.specs}})

    def build(tmp: Path) -> None:
        tokenizer, base = load_tokenizer(tokenizer_dir), load_tokenizer(base_dir) if base_dir else None
        stats = {}
        for domain in domains if domains is not None else build_data(data, tokenizer_dir):
            held_out = domain.heldout_texts(max_docs)
            final = tokens_per_char(tokenizer, held_out)
            stats[domain.name] = {"base": tokens_per_char(base, held_out) if base else final, "final": final}
        atomic_write_json(tmp / "tokens_per_char.json", stats)

    entry = build_once(data.cache_dir / "stats" / f"tokens_per_char-{key}", build)
    return json.loads((entry / "tokens_per_char.json").read_text(encoding="utf-8"))


def build_data(data: DataPlan, tokenizer_dir: Path) -> list[DomainTokens]:
    domains = [prepare_domain(spec, tokenizer_dir, data.cache_dir, seed=data.split_seed, num_proc=data.num_proc,
                              on_bad_text=data.on_bad_text, progress=show_progress())
               for spec in data.specs]
    check_eval_overlap(domains, data.split_seed)  # role eval: none of its documents trained on
    return domains


def split_record(data: DataPlan, domains: list[DomainTokens] | None = None) -> dict:
    """The run's train/held-out split (summary.json "split", cptlab_split.json of a published model):
    the split seed and, per domain, what was split and how; with `domains`, which documents were held out."""
    record = {"split_seed": data.split_seed, "domains": {}}
    tokens = {d.name: d for d in domains or ()}
    for spec in data.specs:
        entry = {"sources": list(spec.sources), "heldout": "all" if spec.role == "eval" else spec.heldout,
                 "max_docs": spec.max_docs}
        if spec.name in tokens:
            entry |= {"heldout_docs": tokens[spec.name].n_val_docs,
                      "heldout_sha256": tokens[spec.name].heldout_sha256}
        record["domains"][spec.name] = entry
    return record


def check_base_split(parts: Parts) -> None:
    """Refuse, before any heavy work, to evaluate on documents the base model was trained on, when the base
    was published by cptlab (it carries cptlab_split.json) and shares sources with this run."""
    base = parts.model.name_or_path
    if not base or parts.model.random_init:
        return
    path = Path(str(base)).expanduser() / SPLIT_FILE
    if not path.is_file():
        return
    try:
        base_split = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CptlabError(f"{path}: unreadable ({err}); delete it or republish the base model") from None
    reason = leaks_from_base(base_split, split_record(parts.data), base_dir=str(path.parent))
    if reason:
        raise CptlabError(reason)


def build_model(parts: Parts, tokenizer, base_tokenizer=None, *, adapter=None):
    """(model, base_rows): the base model, grown for an extended tokenizer, with `adapter` (the adapter node;
    None: none) applied. `base_rows` is the embedding rows before growth (rows >= it are the new tokens); it is also
    recorded on the model for the freezing schedule (cptlab.model.freeze.base_rows_of)."""
    model_plan, tok, data = parts.model, parts.tokenizer, parts.data
    name_or_path, fields = model_source(model_plan)
    model = load_model(name_or_path, config=fields, dtype=model_plan.dtype, random_init=model_plan.random_init,
                       vocab_size=len(base_tokenizer) if base_tokenizer is not None else len(tokenizer),
                       bos_id=tokenizer.bos_token_id, eos_id=tokenizer.eos_token_id, seed=parts.seed)
    if data.doc_masking:  # a hub id or a GGUF base: its model type is first known here
        check_doc_masking(getattr(model.config, "model_type", None))
    rows = model.get_input_embeddings().weight.shape[0]
    base_rows = rows
    if len(tokenizer) > rows:
        if tok.kind != "extend":
            raise CptlabError(f"the tokenizer has {len(tokenizer)} tokens but the model's embedding has {rows} rows "
                              f"(tokenizer.path / model.name_or_path do not match)")
        grow_embeddings(model, len(tokenizer), init=tok.init, base_tokenizer=base_tokenizer,
                        new_tokenizer=tokenizer, pad_to_multiple_of=tok.pad_to_multiple_of, seed=parts.seed)
    limit = max_positions(model)
    if limit is not None and data.seq_len > limit:
        raise CptlabError(f"data.seq_len={data.seq_len} exceeds the model's maximum positions ({limit})")
    if model_plan.gradient_checkpointing:
        # Non-reentrant checkpointing also works when the embeddings are frozen (LoRA, two-stage).
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model = apply_adapter(model, adapter, base_rows=base_rows)
    if model_plan.compile:
        model.compile()  # in place (nn.Module.compile): names, state dicts and peft wrapping stay as they are
    return model, base_rows


def build_loggers(cfg: DictConfig) -> list:
    """The configured loggers, each given the full resolved config; wandb plots against tokens seen."""
    loggers = [hydra.utils.instantiate(node) for node in cfg.logger.values() if node is not None]
    config = OmegaConf.to_container(cfg, resolve=True)
    for lg in loggers:
        lg.log_hyperparams(config)
        if type(lg).__name__ == "WandbLogger":
            lg.experiment.define_metric("trainer/tokens_seen")
            for pattern in ("train/*", "val/*", "lr", "lr/*"):
                lg.experiment.define_metric(pattern, step_metric="trainer/tokens_seen")
    return loggers


def build_retention(retention: DictConfig, module: CPTModule, plan: FreezePlan) -> EMA | None:
    """The EMA callback (retention=ema or mean_teacher), averaging every parameter some phase trains;
    for mean_teacher also the KL loss against it, installed on the module. The values were checked by
    cptlab.run.validate (the rules beside cptlab.config.RetentionConfig), before any tokenizer or cache."""
    if retention.name == "none":
        return None
    names = sorted(set().union(*(plan.trainable(i) for i in range(len(plan.phases)))))
    ema = EMA(retention.decay, every_n_steps=retention.every_n_steps, names=names)
    if retention.name == "mean_teacher":
        module.retention, module.retention_weight = MeanTeacher(ema, on=retention.on), retention.weight
    return ema


@dataclass
class Lightning:
    module: CPTModule
    datamodule: CPTDataModule
    trainer: pl.Trainer
    train_metrics: TrainMetrics
    evaluator: PeriodicEval
    harness: HarnessEval | None = None  # eval.harness.tasks (cptlab.training.harness_eval)


def build_lightning(run_plan: RunPlan, model, domains: list[DomainTokens], tokenizer, run_dir: Path,
                    base_rows: int | None = None) -> Lightning:
    """The module, data module, trainer and metric callbacks of a run; `base_rows`: the base's vocabulary size
    when the run extended it (step 0 then also scores the base's own distribution, PeriodicEval). The freezing
    phases, mixture stages and LR schedule and scales are the plan's, as its validation built them."""
    cfg, tr = run_plan.cfg, run_plan.trainer
    data = cfg.data
    sampler = MixtureSampler(domains, replay_ratio=data.replay_ratio, batch_size=data.batch_size,
                             seq_len=data.seq_len, seed=cfg.seed, temperature=data.get("temperature"),
                             stages=list(run_plan.stages))
    evals = {d.name: torch.from_numpy(eval_blocks(d, data.seq_len, cfg.eval.max_blocks)) for d in domains}
    token_bytes = torch.from_numpy(token_byte_lengths(tokenizer))
    tokens_per_batch = data.batch_size * data.seq_len
    plan = FreezePlan(model, list(run_plan.phases), train_new_tokens=train_new_tokens_of(cfg.adapter))
    module = CPTModule(model, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay, betas=cfg.optim.betas,
                       eps=cfg.optim.eps, schedule=run_plan.lr_schedule, freeze=plan,
                       nan_policy=cfg.train.nan_policy, lr_scale=run_plan.lr_scale,
                       max_consecutive_skipped=cfg.train.max_consecutive_skipped,
                       max_skipped_batches=cfg.train.max_skipped_batches,
                       chunked_loss=bool(cfg.model.get("chunked_loss", False)),
                       doc_eos=tokenizer.eos_token_id if data.get("doc_masking") else None)
    ema = build_retention(cfg.retention, module, plan)
    plain = not show_progress()  # no TTY (a SLURM log, nohup, CI): plain progress lines instead of bars
    train_metrics = TrainMetrics(tr.log_every_n_steps, tokens_per_batch, plain=plain, mix=sampler.mix)
    evaluator = PeriodicEval(evals, token_bytes, every_n_steps=cfg.eval.every_n_steps,
                             batch_size=cfg.eval.batch_size, tokens_per_batch=tokens_per_batch, clock=train_metrics,
                             ema=ema, plain=plain, base_rows=base_rows)
    harness = build_harness_eval(cfg.eval.harness, tokenizer, specs=list(run_plan.parts.data.specs), domains=domains,
                                 seed=data.split_seed, on_bad_text=data.on_bad_text,
                                 every_default=cfg.eval.every_n_steps, tokens_per_batch=tokens_per_batch,
                                 clock=train_metrics, ema=ema)
    checkpoints = ModelCheckpoint(dirpath=layout.checkpoints_dir(run_dir), filename="step{step}", save_last=True,
                                  save_top_k=0, every_n_train_steps=tr.checkpoint_every_n_steps)
    # EMA first: its average exists before the step-0 evaluation and is updated before each evaluation.
    preemption = PreemptionCheckpoint(layout.last_checkpoint(run_dir))
    callbacks = [c for c in (ema, train_metrics, evaluator, harness, preemption, checkpoints) if c is not None]
    if show_progress():
        from pytorch_lightning.callbacks import RichProgressBar

        callbacks.append(RichProgressBar(leave=True))
    loggers = build_loggers(cfg)
    strategy = tr.strategy
    if strategy == "fsdp":
        strategy = fsdp_strategy(model, sharding=tr.fsdp_sharding)
        module.replicated = replicated_params(model)
    trainer = pl.Trainer(accelerator=tr.accelerator, devices=tr.devices, strategy=strategy,
                         precision=tr.precision, max_steps=tr.max_steps,
                         accumulate_grad_batches=tr.accumulate_grad_batches,
                         gradient_clip_val=tr.grad_clip, logger=loggers, callbacks=callbacks,
                         enable_progress_bar=show_progress(), enable_model_summary=False,
                         num_sanity_val_steps=0, limit_val_batches=0, use_distributed_sampler=False,
                         default_root_dir=run_dir, plugins=[AtomicCheckpointIO()])
    datamodule = CPTDataModule(sampler, num_workers=tr.num_workers, pin_memory=tr.accelerator == "gpu")
    return Lightning(module, datamodule, trainer, train_metrics, evaluator, harness)

"""cptlab-train: compose the config, build tokenizer, data and model, fit, write the run record.

    cptlab-train experiment=demo_zh                  # a run (re-running it resumes it)
    cptlab-train -m experiment=demo_zh data.replay_ratio=0,0.25
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from pathlib import Path

import hydra
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

import cptlab.config  # noqa: F401  (registers the schema and resolvers before Hydra composes)
from cptlab import pipeline
from cptlab.checkpoint import resume_checkpoint
from cptlab.cli import CONF_DIR, one_line, quiet_libraries, train_main
from cptlab.errors import CptlabError
from cptlab.evaluation import unigram_bpb
from cptlab.model.save import publish_model
from cptlab.run.plots import plot_forgetting_curve
from cptlab.run.summary import domain_rows, read_summary, render_table, write_report, write_summary
from cptlab.tokenizer.hf import load_tokenizer
from cptlab.validate import validate


def train(cfg: DictConfig, run_dir: Path) -> tuple[dict, bool]:
    """One run, start to finish (or resumed from run_dir/checkpoints/last.ckpt).
    Returns the summary and whether this process is the global rank zero (the one that reports)."""
    started = time.time()
    validate(cfg)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    if cfg.trainer.num_threads:
        torch.set_num_threads(cfg.trainer.num_threads)

    tokenizer_dir = pipeline.build_tokenizer(cfg, run_dir)
    tokenizer = load_tokenizer(tokenizer_dir)
    domains = pipeline.build_data(cfg, tokenizer_dir)
    model = pipeline.build_model(cfg, tokenizer)
    run = pipeline.build_lightning(cfg, model, domains, tokenizer, run_dir)

    run.trainer.fit(run.module, datamodule=run.datamodule, ckpt_path=resume_checkpoint(run_dir))
    run.trainer.save_checkpoint(run_dir / "checkpoints" / "last.ckpt", weights_only=False)

    roles = {d.name: d.role for d in domains}
    summary = {
        "status": "completed", "error": None, "name": cfg.name,
        "overrides": list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else [],
        "steps": run.trainer.global_step,
        "tokens_seen": run.module.batches_done * cfg.data.batch_size * cfg.data.seq_len,
        "replay_ratio": cfg.data.replay_ratio, "replay_share": run.module.replay_share,
        "final": {**run.train_metrics.latest, **run.evaluator.latest},
        "step0": run.evaluator.first,
        "domains": domain_rows(run.evaluator.first, run.evaluator.latest, roles,
                               unigram={d.name: unigram_bpb(d.train_tokens(), run.evaluator.eval_sets[d.name],
                                                            run.evaluator.token_bytes) for d in domains}),
        "tokens_per_char": {d.name: tokens_per_char(d) for d in domains},
        "params": {"trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
                   "total": sum(p.numel() for p in model.parameters())},
        "throughput": {"tokens_per_sec": run.train_metrics.mean_tokens_per_sec},
        "wall_time_s": time.time() - started,
        "paths": {"run_dir": str(run_dir), "metrics": str(run_dir / "metrics.csv"),
                  "tokenizer": str(tokenizer_dir), "checkpoint": str(run_dir / "checkpoints" / "last.ckpt")},
    }
    if run.trainer.is_global_zero:
        summary["paths"]["plot"] = str(plot_forgetting_curve(run_dir, roles, title=f"{cfg.name} · {run_dir.name}"))
        if cfg.publish_dir:
            summary["paths"]["export"] = str(publish_model(model, tokenizer_dir, Path(cfg.publish_dir)))
    return summary, run.trainer.is_global_zero


def tokens_per_char(domain) -> dict:
    """Held-out tokens (document-end markers excluded) per character; base == final until the
    vocabulary is changed by the run."""
    value = (domain.n_val_tokens - domain.n_val_docs) / max(domain.val_chars, 1)
    return {"base": value, "final": value}


@hydra.main(config_path=str(CONF_DIR), config_name="train", version_base="1.3")
def hydra_main(cfg: DictConfig) -> None:
    quiet_libraries()
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    previous = read_summary(run_dir)
    published = not cfg.publish_dir or (Path(cfg.publish_dir).expanduser() / "config.json").is_file()
    if previous and previous.get("status") == "completed" and published:
        print(f"cptlab-train: {run_dir} already completed; delete it to run again")
        render_table(previous)
        return
    try:
        summary, reporter = train(cfg, run_dir)
    except Exception as err:
        message = str(err) if isinstance(err, CptlabError) else one_line(err)
        write_summary(run_dir, {"status": "failed", "error": message, "name": cfg.name,
                                "overrides": list(HydraConfig.get().overrides.task)})
        if os.environ.get("HYDRA_FULL_ERROR") == "1" or not isinstance(err, CptlabError):
            traceback.print_exc()
        print(f"cptlab-train: error: {message}", file=sys.stderr)
        sys.exit(2 if isinstance(err, CptlabError) else 1)
    if reporter:
        write_summary(run_dir, summary)
        write_report(run_dir, summary)
        render_table(summary)


if __name__ == "__main__":
    train_main()

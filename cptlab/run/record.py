"""The end of a run, in whichever process trained it (also a spawned DDP rank): the final checkpoint
on every rank, then on global rank zero summary.json, report.md, the forgetting-curve plot and,
when configured, the published model directory."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytorch_lightning as pl

from cptlab.data.mixture import blocks_sha256
from cptlab.errors import CptlabError
from cptlab.evaluation import unigram_bpb
from cptlab.export import export_run, merged_model
from cptlab.fsdp import full_parameters, is_fsdp
from cptlab.model.freeze import count_parameters
from cptlab.model.save import publish_model
from cptlab.run.plots import plot_forgetting_curve
from cptlab.run.summary import domain_rows, write_report, write_summary
from cptlab.run.wandb_report import report_to_wandb
from cptlab.utils.hashing import hash_dir


class RunRecord(pl.Callback):
    def __init__(self, *, run_dir: Path, name: str, overrides: list[str], domains, tokenizer_dir: Path,
                 replay_ratio: float, tokens_per_batch: int, train_metrics, evaluator,
                 publish_dir: str | None = None, tokenizer_stats: dict | None = None,
                 vocabulary: dict | None = None, started: float | None = None, setup: dict | None = None,
                 split: dict | None = None):
        self.run_dir, self.name, self.overrides = Path(run_dir), name, overrides
        self.domains, self.tokenizer_dir = domains, tokenizer_dir
        self.replay_ratio, self.tokens_per_batch = replay_ratio, tokens_per_batch
        self.train_metrics, self.evaluator, self.publish_dir = train_metrics, evaluator, publish_dir
        self.tokenizer_stats, self.vocabulary = tokenizer_stats or {}, vocabulary or {}
        self.started = started or time.time()  # wall time counts tokenizer and data preparation too
        self.setup = setup or {}  # seconds per set-up phase (train.SetupClock)
        self.split = split  # the train/held-out split (pipeline.split_record)
        self.summary: dict | None = None

    def on_train_end(self, trainer, pl_module):
        last = self.run_dir / "checkpoints" / "last.ckpt"
        trainer.save_checkpoint(last, weights_only=False)
        with full_parameters(trainer):  # FSDP: every rank enters; rank 0 then sees the whole model
            if trainer.is_global_zero:
                self.finish(trainer, pl_module)

    def finish(self, trainer, pl_module) -> dict:
        """Write summary.json, report.md, the plot (and the published model); global rank zero only."""
        self.summary = self.build(trainer, pl_module)
        write_summary(self.run_dir, self.summary)
        write_report(self.run_dir, self.summary)
        report_to_wandb(trainer.loggers, self.summary, self.run_dir, {d.name: d.role for d in self.domains})
        return self.summary

    def build(self, trainer, module) -> dict:
        ev, roles = self.evaluator, {d.name: d.role for d in self.domains}
        model = module.model
        summary = {
            "status": "completed", "error": None, "name": self.name, "overrides": self.overrides,
            "steps": trainer.global_step,
            "tokens_seen": module.batches_done * self.tokens_per_batch,
            "replay_ratio": self.replay_ratio, "replay_share": module.replay_share,
            "final": {**self.train_metrics.latest, **ev.latest},
            "step0": ev.first,
            "domains": domain_rows(ev.first, ev.latest, roles, unigram={
                d.name: unigram_bpb(d.unigram_counts(), ev.eval_sets[d.name], ev.token_bytes) for d in self.domains}),
            "tokens_per_char": self.tokenizer_stats,
            "data": {d.name: {"train_tokens": d.n_train_tokens, "heldout_tokens": d.n_val_tokens,
                              "train_docs": d.n_train_docs, "heldout_docs": d.n_val_docs, **d.stats}
                     for d in self.domains},
            "skipped_batches": module.skipped_batches,
            "vocabulary": {**self.vocabulary, "tokenizer_sha256": hash_dir(self.tokenizer_dir)},
            "split": self.split,
            "params": dict(zip(("trainable", "total"), count_parameters(model))),
            "throughput": {"tokens_per_sec": self.train_metrics.mean_tokens_per_sec},
            "wall_time_s": time.time() - self.started,
            "setup": self.setup,
            "paths": {"run_dir": str(self.run_dir), "metrics": str(self.run_dir / "metrics.csv"),
                      "tokenizer": str(self.tokenizer_dir),
                      "checkpoint": str(self.run_dir / "checkpoints" / "last.ckpt")},
        }
        for name, blocks in ev.eval_sets.items():  # which tokens were scored: cptlab-compare checks runs agree
            summary["domains"][name] |= {"eval_blocks": len(blocks), "eval_blocks_sha256": blocks_sha256(blocks)}
        bad = sorted(k for k, v in summary["final"].items() if isinstance(v, float) and not math.isfinite(v))
        if bad:  # a diverged run is never recorded (or published) as completed
            raise CptlabError(f"the run ended with non-finite metrics ({bad[0]}={summary['final'][bad[0]]}, "
                              f"{len(bad)} in all): the model diverged (lower optim.lr?); not marked completed")
        summary["paths"]["plot"] = str(plot_forgetting_curve(self.run_dir, roles, title=f"{self.name} · "
                                                             f"{self.run_dir.name}"))
        if self.publish_dir and is_fsdp(trainer):  # from the full checkpoint, onto a model outside FSDP
            summary["paths"]["export"] = str(export_run(self.run_dir, self.publish_dir, split=self.split))
        elif self.publish_dir:  # last: merging adapters changes the model in place
            summary["paths"]["export"] = str(publish_model(merged_model(model), self.tokenizer_dir,
                                                           Path(self.publish_dir), self.split))
        return summary

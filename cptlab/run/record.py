"""The end of a run, in whichever process trained it (also a spawned DDP rank): the final checkpoint on every
rank, then on global rank zero summary.json (cptlab.run.summarize), report.md, the forgetting-curve plot, the
wandb report and, when configured, the published model directory."""

from __future__ import annotations

import time
from pathlib import Path

import pytorch_lightning as pl

from cptlab.model.export import merged_model
from cptlab.model.save import publish_model
from cptlab.run.export import export_run
from cptlab.run.plots import plot_forgetting_curve
from cptlab.run.summarize import summarize
from cptlab.run.wandb_report import report_to_wandb
from cptlab.rundir.layout import last_checkpoint
from cptlab.rundir.summary import write_report, write_summary
from cptlab.training.fsdp import full_parameters, is_fsdp


class RunRecord(pl.Callback):
    def __init__(self, run, *, overrides: list[str], started: float | None = None):
        self.run, self.overrides = run, overrides  # run: cptlab.run.build.Run
        self.started = started or time.time()  # wall time counts tokenizer and data preparation too
        self.summary: dict | None = None

    def on_train_end(self, trainer, pl_module):
        last = last_checkpoint(self.run.run_dir)
        trainer.save_checkpoint(last, weights_only=False)  # with optimizer state (it is read weights-only)
        with full_parameters(trainer):  # FSDP: every rank enters; rank 0 then sees the whole model
            if trainer.is_global_zero:
                self.finish(trainer, pl_module)

    def finish(self, trainer, pl_module) -> dict:
        """Write summary.json, report.md, the plot (and the published model); global rank zero only."""
        run, run_dir = self.run, Path(self.run.run_dir)
        summary = summarize(run, trainer, pl_module, overrides=self.overrides, started=self.started)
        roles = {d.name: d.role for d in run.domains}
        summary["paths"]["plot"] = str(plot_forgetting_curve(run_dir, roles, title=f"{run.cfg.name} · {run_dir.name}"))
        export = publish(run, trainer, pl_module.model, summary["split"])
        if export is not None:
            summary["paths"]["export"] = str(export)
        self.summary = summary
        write_summary(run_dir, summary)
        write_report(run_dir, summary)
        report_to_wandb(trainer.loggers, summary, run_dir, roles)
        return summary


def publish(run, trainer, model, split: dict) -> Path | None:
    """The trained model and tokenizer as a plain Hugging Face directory at cfg.publish_dir (None: not asked).
    Last thing a run does: merging adapters changes the model in place."""
    if not run.cfg.publish_dir:
        return None
    if is_fsdp(trainer):  # from the full checkpoint, onto a model outside FSDP
        return export_run(run.run_dir, run.cfg.publish_dir, split=split)
    return publish_model(merged_model(model), run.tokenizer_dir, Path(run.cfg.publish_dir), split)

"""What summary.json holds at the end of a run: status, steps and tokens, step-0 and final metrics, per-domain
learning/forgetting against a unigram model, data, vocabulary, split, parameters, throughput, set-up times and
paths. Data only: writing, plotting and publishing are cptlab.run.record's."""

from __future__ import annotations

import math
import time
from pathlib import Path

from omegaconf import OmegaConf

from cptlab.data.mixture import blocks_sha256
from cptlab.errors import CptlabError
from cptlab.evaluation.bpb import unigram_bpb
from cptlab.model.freeze import count_parameters
from cptlab.run import pipeline
from cptlab.rundir import layout
from cptlab.rundir.summary import EVAL_BLOCK_SUMS, block_sums_record, domain_rows
from cptlab.tokenizer.prepare import extension_stats
from cptlab.utils.hashing import hash_dir


def mixture_record(cfg, sampler, batches_done: int) -> dict:
    """The resolved mixture (cptlab.data.stages): each stage's steps and exact shares, and the shares achieved."""
    return {"temperature": cfg.data.get("temperature"),
            "stages": sampler.schedule(int(OmegaConf.select(cfg, "trainer.accumulate_grad_batches", default=1))),
            "achieved": sampler.mix(batches_done)}


def summarize(run, trainer, module, *, overrides: list[str], started: float) -> dict:
    """The completed run's summary (a cptlab.run.build.Run, its trainer and module after fit); CptlabError
    when a metric is non-finite: a diverged run is never recorded (or published) as completed."""
    cfg, ev, metrics = run.cfg, run.lightning.evaluator, run.lightning.train_metrics
    harness = getattr(run.lightning, "harness", None)  # eval.harness.tasks (cptlab.training.harness_eval)
    sampler = getattr(getattr(run.lightning, "datamodule", None), "sampler", None)  # the mixture (cptlab.data)
    roles = {d.name: d.role for d in run.domains}
    run_dir = Path(run.run_dir)
    summary = {
        "status": "completed", "error": None, "name": cfg.name, "overrides": overrides,
        "steps": trainer.global_step,
        "tokens_seen": module.batches_done * cfg.data.batch_size * cfg.data.seq_len,
        "replay_ratio": cfg.data.replay_ratio, "replay_share": module.replay_share,
        **({"mixture": mixture_record(cfg, sampler, module.batches_done)} if sampler is not None else {}),
        "final": {**metrics.latest, **ev.latest, **(harness.latest if harness else {})},
        "step0": {**ev.first, **(harness.first if harness else {})},
        # (an eval-role domain trains on nothing: no unigram model of its own to compare with)
        "domains": domain_rows(ev.first, ev.latest, roles, unigram={
            d.name: unigram_bpb(d.unigram_counts(), ev.eval_sets[d.name], ev.token_bytes) for d in run.domains
            if d.role != "eval"}),
        **({"harness": harness.summary()} if harness else {}),
        "tokens_per_char": run.tokenizer_stats,
        "data": {d.name: {"train_tokens": d.n_train_tokens, "heldout_tokens": d.n_val_tokens,
                          "train_docs": d.n_train_docs, "heldout_docs": d.n_val_docs, **d.stats}
                 for d in run.domains},
        "skipped_batches": module.skipped_batches,
        "vocabulary": {"base_rows": run.base_rows, "final_tokens": len(run.tokenizer),
                       "extension": extension_stats(run.tokenizer_dir), "tokenizer_sha256": hash_dir(run.tokenizer_dir)},
        "split": pipeline.split_record(run.data, run.domains),
        "params": dict(zip(("trainable", "total"), count_parameters(module.model))),
        "throughput": {"tokens_per_sec": metrics.mean_tokens_per_sec},
        "wall_time_s": time.time() - started,
        "setup": run.setup,
        "paths": {"run_dir": str(run_dir), "metrics": str(run_dir / layout.METRICS),
                  "tokenizer": str(run.tokenizer_dir), "checkpoint": str(layout.last_checkpoint(run_dir))},
    }
    for name, blocks in ev.eval_sets.items():  # which tokens were scored: cptlab-compare checks runs agree
        summary["domains"][name] |= {"eval_blocks": len(blocks), "eval_blocks_sha256": blocks_sha256(blocks)}
    # The final evaluation's per-block sums (the same forward passes as its bpb): cptlab-compare's bootstrap.
    windows = {d.name: (d.n_val_tokens - 1) // cfg.data.seq_len for d in run.domains}
    summary[EVAL_BLOCK_SUMS] = {name: block_sums_record(rows, windows.get(name))
                                for name, rows in getattr(ev, "latest_blocks", {}).items()}
    bad = sorted(k for k, v in summary["final"].items() if isinstance(v, float) and not math.isfinite(v))
    if bad:
        raise CptlabError(f"the run ended with non-finite metrics ({bad[0]}={summary['final'][bad[0]]}, "
                          f"{len(bad)} in all): the model diverged (lower optim.lr?); not marked completed")
    return summary

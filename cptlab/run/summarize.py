"""What summary.json holds at the end of a run: status, steps and tokens, step-0 and final metrics, per-domain
learning/forgetting against a unigram model, data, vocabulary, split, parameters, throughput, set-up times and
paths. Data only: writing, plotting and publishing are cptlab.run.record's."""

from __future__ import annotations

import math
import time
from pathlib import Path

from cptlab import pipeline
from cptlab.data.mixture import blocks_sha256
from cptlab.errors import CptlabError
from cptlab.evaluation import unigram_bpb
from cptlab.model.freeze import count_parameters
from cptlab.run import layout
from cptlab.run.summary import domain_rows
from cptlab.tokenizer.prepare import extension_stats
from cptlab.utils.hashing import hash_dir


def summarize(run, trainer, module, *, overrides: list[str], started: float) -> dict:
    """The completed run's summary (a cptlab.run.build.Run, its trainer and module after fit); CptlabError
    when a metric is non-finite: a diverged run is never recorded (or published) as completed."""
    cfg, ev, metrics = run.cfg, run.lightning.evaluator, run.lightning.train_metrics
    harness = getattr(run.lightning, "harness", None)  # eval.harness.tasks (cptlab.harness)
    roles = {d.name: d.role for d in run.domains}
    run_dir = Path(run.run_dir)
    summary = {
        "status": "completed", "error": None, "name": cfg.name, "overrides": overrides,
        "steps": trainer.global_step,
        "tokens_seen": module.batches_done * cfg.data.batch_size * cfg.data.seq_len,
        "replay_ratio": cfg.data.replay_ratio, "replay_share": module.replay_share,
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
        "split": pipeline.split_record(cfg, run.domains),
        "params": dict(zip(("trainable", "total"), count_parameters(module.model))),
        "throughput": {"tokens_per_sec": metrics.mean_tokens_per_sec},
        "wall_time_s": time.time() - started,
        "setup": run.setup,
        "paths": {"run_dir": str(run_dir), "metrics": str(run_dir / layout.METRICS),
                  "tokenizer": str(run.tokenizer_dir), "checkpoint": str(layout.last_checkpoint(run_dir))},
    }
    for name, blocks in ev.eval_sets.items():  # which tokens were scored: cptlab-compare checks runs agree
        summary["domains"][name] |= {"eval_blocks": len(blocks), "eval_blocks_sha256": blocks_sha256(blocks)}
    bad = sorted(k for k, v in summary["final"].items() if isinstance(v, float) and not math.isfinite(v))
    if bad:
        raise CptlabError(f"the run ended with non-finite metrics ({bad[0]}={summary['final'][bad[0]]}, "
                          f"{len(bad)} in all): the model diverged (lower optim.lr?); not marked completed")
    return summary

"""The layout of a run directory, named once: what cptlab-train writes there and cptlab-export, cptlab-merge,
cptlab-compare and a re-run read back.

    <run_dir>/.hydra/{config,overrides}.yaml   the composed config and the command-line overrides (Hydra)
    <run_dir>/tokenizer/, tokenizer_base/      the run's tokenizer, and the base's when the vocabulary changed
    <run_dir>/checkpoints/last.ckpt            what a re-run resumes from (step<N>.ckpt: periodic saves)
    <run_dir>/metrics.csv                      every logged metric (train/*, val/*, lr*)
    <run_dir>/summary.json, report.md          the record of the run and its table
    <run_dir>/forgetting_curve.png             held-out bpb per domain along the run
    <run_dir>/inputs.json, .cptlab.lock        the fingerprints a re-run is checked against; the run's lock
"""

from __future__ import annotations

from pathlib import Path

HYDRA = ".hydra"
CONFIG = f"{HYDRA}/config.yaml"
OVERRIDES = f"{HYDRA}/overrides.yaml"
TOKENIZER = "tokenizer"
TOKENIZER_BASE = "tokenizer_base"
CHECKPOINTS = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
METRICS = "metrics.csv"
SUMMARY = "summary.json"
REPORT = "report.md"
PLOT = "forgetting_curve.png"
INPUTS = "inputs.json"
LOCK = ".cptlab.lock"


def checkpoints_dir(run_dir: Path | str) -> Path:
    return Path(run_dir) / CHECKPOINTS


def last_checkpoint(run_dir: Path | str) -> Path:
    return checkpoints_dir(run_dir) / LAST_CHECKPOINT

"""The layout of a run directory, named once: what cptlab-train writes there and cptlab-export, cptlab-merge,
cptlab-compare and a re-run read back.

    <run_dir>/.hydra/{config,overrides}.yaml   the composed config and the command-line overrides (Hydra)
    <run_dir>/tokenizer/, tokenizer_base/      the run's tokenizer, and the base's when the vocabulary changed
    <run_dir>/checkpoints/last.ckpt            what a re-run resumes from (step<N>.ckpt: periodic saves)
    <run_dir>/metrics.csv                      every logged metric (train/*, val/*, lr*)
    <run_dir>/summary.json, report.md          the record of the run and its table
    <run_dir>/forgetting_curve.png             held-out bpb per domain along the run
    <run_dir>/inputs.json, .cptlab.lock        the fingerprints a re-run is checked against; the run's lock
    <run_dir>/.cptlab-output.json              {"kind": "run"}: the directory is cptlab's (cptlab.run.guard.claim_run_dir;
                                               a directory without it that holds other files is never written into)
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
MERGES = ("merge.json", "merge_ema.json")  # cptlab-merge's scores (cptlab.run.merge.merge_files)
INPUTS = "inputs.json"
LOCK = ".cptlab.lock"
RUN_KIND = "run"  # the kind in the run directory's cptlab.utils.io.OUTPUT_MARKER
# The config keys that name a run's inputs on disk: an output (cptlab-export --out, publish_dir) never replaces them.
INPUT_KEYS = ("model.name_or_path", "model.gguf", "tokenizer.path")


def checkpoints_dir(run_dir: Path | str) -> Path:
    return Path(run_dir) / CHECKPOINTS


def last_checkpoint(run_dir: Path | str) -> Path:
    return checkpoints_dir(run_dir) / LAST_CHECKPOINT


def input_paths(run_dir: Path | str) -> dict[str, Path]:
    """{what: path} of the run directory and of the local files its config reads (INPUT_KEYS, as far as they
    resolve here): the paths an export of the run must not write over. Cheap: the config is read, nothing built."""
    from omegaconf import OmegaConf

    run_dir = Path(run_dir)
    out = {"the run directory": run_dir}
    try:
        cfg = OmegaConf.load(run_dir / CONFIG)
    except Exception:  # no or no readable config: the export reports it, by name, when it loads the run
        return out
    for key in INPUT_KEYS:
        value = OmegaConf.select(cfg, key, default=None, throw_on_resolution_failure=False)
        if isinstance(value, str) and value:
            out[key] = Path(value).expanduser()
    return out

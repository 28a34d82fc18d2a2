"""What a run directory was started with, who is using it, and whether it is cptlab's at all. A re-run with
other inputs (config that shapes the model, tokenizer or data; the sources' content; the base model's files), a
second process on the same directory, or a directory holding files cptlab did not write is refused with one
line, instead of silently mixing two runs in one record or overwriting a user's files."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from cptlab.config import check_value
from cptlab.errors import CptlabError, RunDirRefused
from cptlab.run.validate import RunPlan
from cptlab.rundir import layout
from cptlab.rundir.layout import CHECKPOINTS, INPUTS, LOCK, METRICS, PLOT, REPORT, SUMMARY, last_checkpoint
from cptlab.utils.hashing import hash_obj
from cptlab.utils.io import OUTPUT_MARKER, atomic_write_json, mark_output, output_kind
from cptlab.utils.lease import LeaseLock

# The config sections whose values shape the model, tokenizer and data (less what only affects speed).
SHAPING = ("seed", "model", "tokenizer", "data", "schedule", "adapter")
NOT_SHAPING = {"model.compile", "model.gradient_checkpointing", "model.chunked_loss", "data.num_workers",
               "data.num_proc", "data.max_doc_bytes"}  # (a cap refuses a source; it never changes what is read)
# What a restart removes: the record of the earlier attempt (tokenizer and caches are rebuilt or reused).
RUN_OUTPUTS = (CHECKPOINTS, METRICS, SUMMARY, REPORT, PLOT, "hparams.yaml")
# The config keys that choose the train/held-out split: a resume across a change of them would score the rest
# of the run on other held-out documents than its start (made-up forgetting), so even =resume refuses it.
SPLIT_KEYS = re.compile(r"data\.split_seed|data\.domains\.[^.]+\.heldout")


def is_rank_zero() -> bool:
    """The process that owns the run directory: not a rank Lightning or SLURM started for the same run."""
    for var in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if os.environ.get(var, "0") != "0":
            return False
    return True


def _flat(prefix: str, value, out: dict) -> dict:
    if isinstance(value, dict) and value:
        for k, v in value.items():
            _flat(f"{prefix}.{k}" if prefix else str(k), v, out)
    elif prefix not in NOT_SHAPING:
        out[prefix] = value
    return out


def _base_files(path: str | None) -> list | None:
    """Name, size and mtime of a base model/tokenizer's files (cheap: its weights are not read)."""
    if not path:
        return None
    p = Path(str(path)).expanduser()
    if p.is_file():
        files = [p]
    elif p.is_dir():
        files = sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith("."))
    else:
        return [str(path)]  # a hub id
    return [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]


def run_inputs(cfg: DictConfig) -> dict:
    """{"config": {dotted key: value}, "sources": {domain: fingerprint}, "base": {...}} of a composed config."""
    from cptlab.data.sources import source_fingerprint

    config: dict = {}
    for section in SHAPING:
        value = cfg[section]
        _flat(section, OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig) else value, config)
    sources = {name: hash_obj([_content(source_fingerprint(str(s))) for s in d.sources])
               for name, d in cfg.data.domains.items()}
    base = {"model.name_or_path": hash_obj(_base_files(cfg.model.name_or_path)),
            "tokenizer.path": hash_obj(_base_files(cfg.tokenizer.path))}
    return {"config": config, "sources": sources, "base": base}


def _content(fingerprint: list) -> list:
    """A source fingerprint without its files' times: a touch or chmod is not a change of input."""
    return [{**part, "files": [{k: f[k] for k in ("path", "size", "digest")} for f in part["files"]]}
            if "files" in part else part for part in fingerprint]


def changes(old: dict, new: dict) -> list[str]:
    """What differs between two `run_inputs`, each as a short phrase."""
    old_cfg, new_cfg = old.get("config", {}), new.get("config", {})
    # A key only one side has is a schema change between cptlab versions (not compared: it was at its default),
    # except under data.domains, where it is a domain or a domain setting added or removed (a domain field newer
    # than the record, at its empty default, is neither: data.domains.D.source_weights={}).
    keys = [k for k in sorted(set(old_cfg) | set(new_cfg))
            if (k in old_cfg and k in new_cfg
                or k.startswith("data.domains.") and old_cfg.get(k, new_cfg.get(k)) not in (None, {}, []))
            and old_cfg.get(k, "<unset>") != new_cfg.get(k, "<unset>")]
    out = [f"{k} {old_cfg.get(k, '<unset>')} -> {new_cfg.get(k, '<unset>')}" for k in keys]
    for domain in sorted(set(old.get("sources", {})) & set(new.get("sources", {}))):
        if old["sources"][domain] != new["sources"][domain] and f"data.domains.{domain}.sources" not in keys:
            out.append(f"the content of data.domains.{domain}.sources changed")
    for key in sorted(set(old.get("base", {})) & set(new.get("base", {}))):
        if old["base"][key] != new["base"][key] and key not in keys:
            out.append(f"the files of {key} changed")
    return out


def has_progress(run_dir: Path) -> bool:
    """A checkpoint or a completed record: something a re-run would continue from or report."""
    from cptlab.rundir.summary import read_summary

    return last_checkpoint(run_dir).is_file() or (read_summary(run_dir) or {}).get("status") == "completed"


def _recorded(path: Path) -> tuple[dict | None, str | None]:
    """The inputs recorded at `path` (None if none were), and why the file cannot be read as them (None if it can)."""
    if not path.exists():
        return None, None
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        return None, " ".join(str(err).split())[:120] or type(err).__name__
    if not isinstance(old, dict) or not isinstance(old.get("config"), dict):
        return None, "not the record cptlab writes"
    return old, None


def split_changes(old: dict, new: dict) -> list[str]:
    """The changes between two `run_inputs` that move documents between the train and held-out sides."""
    old_cfg, new_cfg = old.get("config", {}), new.get("config", {})
    return [f"{k} {old_cfg[k]} -> {new_cfg[k]}" for k in sorted(set(old_cfg) & set(new_cfg))
            if SPLIT_KEYS.fullmatch(k) and old_cfg[k] != new_cfg[k]]


def check_inputs(cfg: DictConfig, run_dir: Path, policy: str) -> dict | None:
    """Compare the run directory's recorded inputs with this command's. policy: refuse (one line naming what
    changed), restart (the earlier attempt's record is removed and the run starts from step 0),
    resume (the change is accepted and training continues from the checkpoint; not a change of the train/held-out
    split). Returns this command's inputs as computed for the comparison, which the caller records with
    `record_inputs` only once the run has started (an attempt refused later, a checkpoint that does not fit, must
    leave the record as it was); None when the directory records none: nothing to compare, nothing computed (the
    run computes them with `current_inputs` once it has started: reading every source can take a while)."""
    check_value("train.on_changed_inputs", policy)
    path = run_dir / INPUTS
    if not path.exists():
        return None
    old, damaged = _recorded(path)
    progress = has_progress(run_dir)
    if damaged and progress and policy != "restart":
        raise RunDirRefused(f"{path} is damaged ({damaged}), so the run's inputs cannot be compared with this "
                            "command's: start again from step 0 with train.on_changed_inputs=restart, use a new run "
                            f"directory (hydra.run.dir=...), or delete {path} if the inputs are unchanged")
    new = current_inputs(cfg)
    diff = changes(old, new) if old else []
    if (diff or damaged) and progress:  # damaged: only under restart, refused above otherwise
        if policy == "refuse":
            more = f" (and {len(diff) - 1} more)" if len(diff) > 1 else ""
            raise RunDirRefused(f"{run_dir} was started with other inputs: {diff[0]}{more}; use a new run directory "
                                "(hydra.run.dir=...), or accept the change with train.on_changed_inputs=restart "
                                "(start again from step 0) or =resume (continue from its checkpoint)")
        split = split_changes(old, new) if old else []
        if policy == "resume" and split:
            raise RunDirRefused(f"{run_dir} was started with another train/held-out split ({split[0]}): resuming "
                                "would score the rest of the run on other held-out documents than its start; use "
                                "a new run directory (hydra.run.dir=...) or train.on_changed_inputs=restart")
        if policy == "restart":
            import shutil

            for name in RUN_OUTPUTS:
                target = run_dir / name
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
    return new


def current_inputs(cfg: DictConfig) -> dict:
    """This config's `run_inputs` as they read back from inputs.json (what check_inputs compares)."""
    return json.loads(json.dumps(run_inputs(cfg), default=str))


def record_inputs(run_dir: Path, inputs: dict) -> None:
    """Record what the run was started with (`check_inputs`'s result): called once the run has started."""
    atomic_write_json(Path(run_dir) / INPUTS, inputs)


def _earlier_run(run_dir: Path) -> bool:
    """A run directory of a cptlab version from before the run marker: the one file only cptlab writes there,
    inputs.json, holds cptlab's record ({"config", "sources", "base"}; every run since the input check wrote it
    before its first step). Summary, metrics or report files alone prove nothing: users have files of those names."""
    old, _ = _recorded(run_dir / INPUTS)
    return old is not None and set(old) == {"config", "sources", "base"} and all(
        isinstance(v, dict) for v in old.values())


def _hydra_own(entry: Path) -> bool:
    """What Hydra itself writes into a job's directory before cptlab runs (its config and log), or a lock."""
    return entry.name in (layout.HYDRA, LOCK) or (entry.suffix == ".log" and entry.is_file())


def claim_run_dir(run_dir: Path, what: str = "hydra.run.dir") -> None:
    """Make `run_dir` cptlab's run directory, or refuse it (one line, nothing written) when it holds files cptlab
    did not write. A new or empty directory, or one holding only what Hydra writes for a job, is marked
    (run_dir/.cptlab-output.json, kind "run"); a marked one, or an earlier version's run (`_earlier_run`: then
    marked), is used as it is. Call it before anything is written into the directory."""
    run_dir = Path(run_dir)
    if run_dir.is_dir():
        kind = output_kind(run_dir)
        if kind == layout.RUN_KIND:
            return
        if kind is not None:
            raise RunDirRefused(f"{what}={run_dir} is a {kind} written by cptlab, not a run directory: choose "
                                "another run directory; nothing was changed")
        if not _earlier_run(run_dir):
            foreign = sorted(p.name for p in run_dir.iterdir() if not _hydra_own(p))
            if foreign:
                shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
                raise RunDirRefused(f"{what}={run_dir} holds files cptlab did not write ({shown}) and no "
                                    f"{OUTPUT_MARKER} of a cptlab run: choose another run directory; nothing was "
                                    "changed")
    mark_output(run_dir, layout.RUN_KIND)


def check_run_name(cfg: DictConfig) -> None:
    """`name` (and so the run directory paths.runs_dir/<name>/...) stays inside paths.runs_dir (CPTLAB_RUNS):
    `name=../x` or an absolute name would write runs, and replace what is there, anywhere."""
    runs = Path(os.path.normpath(Path(str(cfg.paths.runs_dir)).expanduser()))
    name = str(cfg.name)
    target = Path(os.path.normpath(runs / name))
    if target == runs or runs not in target.parents:
        raise CptlabError(f"name={name}: a run name must lead to a directory inside paths.runs_dir ({runs}, "
                          "CPTLAB_RUNS): use a name without '..' or a leading '/'")


def check_writable(path: Path, what: str) -> None:
    """Refuse, naming `what` chose it, a directory that cannot be created or written (checked by writing a
    file, which also holds for root, whom permission bits do not stop)."""
    import tempfile

    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise CptlabError(f"cannot create {path} ({what}): {existing} is a file, not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=".cptlab-write-test.", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise CptlabError(f"cannot write to {path} ({what}): {err.strerror} in {existing}") from None


class RunLock(LeaseLock):
    """run_dir/.cptlab.lock, naming the process that uses the directory (cptlab.utils.lease): a second process
    is refused; the lock of a dead process is taken over (same host: its pid is gone; any host: its heartbeat
    is older than CPTLAB_LOCK_EXPIRY_S, or it names this SLURM job, requeued)."""

    def __init__(self, run_dir: Path):
        super().__init__(Path(run_dir) / LOCK, subject=str(run_dir), prog="cptlab-train", error=RunDirRefused)


@dataclass
class Checked:
    """What the front end did for this run before Hydra started it (cptlab.cli.train.check_run): the config
    validated, and on rank zero the directory claimed, `lock` taken and `inputs` compared; the job does none
    of it again."""
    lock: RunLock | None = None
    inputs: dict | None = None
    plan: RunPlan | None = None  # the validated run (cptlab.run.validate)

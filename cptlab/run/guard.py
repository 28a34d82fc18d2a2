"""What a run directory was started with, and who is using it. A re-run with other inputs (config that
shapes the model, tokenizer or data; the sources' content; the base model's files) or a second process on
the same directory is refused with one line, instead of silently mixing two runs in one record."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from cptlab.config import check_value
from cptlab.errors import CptlabError, RunDirRefused
from cptlab.run.layout import CHECKPOINTS, INPUTS, LOCK, METRICS, PLOT, REPORT, SUMMARY, last_checkpoint
from cptlab.utils.hashing import hash_obj
from cptlab.utils.io import atomic_write_json

# The config sections whose values shape the model, tokenizer and data (less what only affects speed).
SHAPING = ("seed", "model", "tokenizer", "data", "schedule", "adapter")
NOT_SHAPING = {"model.compile", "model.gradient_checkpointing", "model.chunked_loss", "data.num_workers",
               "data.num_proc"}
# What a restart removes: the record of the earlier attempt (tokenizer and caches are rebuilt or reused).
RUN_OUTPUTS = (CHECKPOINTS, METRICS, SUMMARY, REPORT, PLOT, "hparams.yaml")


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
    # except under data.domains, where it is a domain or a domain setting added or removed.
    keys = [k for k in sorted(set(old_cfg) | set(new_cfg))
            if (k in old_cfg and k in new_cfg or k.startswith("data.domains."))
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
    from cptlab.run.summary import read_summary

    return last_checkpoint(run_dir).is_file() or (read_summary(run_dir) or {}).get("status") == "completed"


def check_inputs(cfg: DictConfig, run_dir: Path, policy: str, *, record: bool = True) -> None:
    """Compare the run directory's recorded inputs with this command's, then (with `record`) record this
    command's. policy: refuse (one line naming what changed), restart (the earlier attempt's record is removed
    and the run starts from step 0), resume (the change is accepted and training continues from the checkpoint)."""
    check_value("train.on_changed_inputs", policy)
    path = run_dir / INPUTS
    if not record and not path.is_file():
        return
    new = run_inputs(cfg)
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        old = None
    new = json.loads(json.dumps(new, default=str))  # as it reads back from the file
    diff = changes(old, new) if old else []
    if diff and has_progress(run_dir):
        if policy == "refuse":
            more = f" (and {len(diff) - 1} more)" if len(diff) > 1 else ""
            raise RunDirRefused(f"{run_dir} was started with other inputs: {diff[0]}{more}; use a new run directory "
                              "(hydra.run.dir=...), or accept the change with train.on_changed_inputs=restart "
                              "(start again from step 0) or =resume (continue from its checkpoint)")
        if policy == "restart" and record:
            import shutil

            for name in RUN_OUTPUTS:
                target = run_dir / name
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
    if record:
        atomic_write_json(path, new)


def precheck_run_dir(cfg: DictConfig, multirun: bool) -> None:
    """Before Hydra starts the job, which writes .hydra/ and its log into the run directory: the run and cache
    directories are writable, and (one run) the directory is neither in use nor started with other inputs.
    `cfg` is composed with its `hydra` node (and HydraConfig set). The lock taken here is kept by this process."""
    node = cfg.hydra.sweep.dir if multirun else cfg.hydra.run.dir
    run_dir = Path(str(node)).expanduser()
    check_writable(run_dir, "hydra.sweep.dir" if multirun else "hydra.run.dir, from paths.runs_dir / CPTLAB_RUNS")
    check_writable(Path(str(cfg.paths.cache_dir)), "paths.cache_dir / CPTLAB_CACHE")
    if multirun or not is_rank_zero() or not run_dir.is_dir():
        return
    lock = RunLock(run_dir).acquire()
    try:
        check_inputs(cfg, run_dir, str(cfg.train.on_changed_inputs), record=False)
    except RunDirRefused:
        lock.release()
        from cptlab.validate import validate

        validate(cfg)  # a bad value is named by its key first, as in any run (rare path: the cost is fine)
        raise
    except CptlabError:  # bad input (a missing source...): validation reports it, by key
        pass


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


class RunLock:
    """run_dir/.cptlab.lock, naming the process that uses the directory. A second process is refused; a
    lock left by a dead process of this host is taken over."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK
        self.held = False

    def _owner(self) -> dict:
        try:
            return json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    def acquire(self) -> RunLock:
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        if self._owner().get("pid") == me["pid"] and self._owner().get("host") == me["host"]:
            self.held = True  # taken by this process already (the command-line front end)
            return self
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner.get("host") == me["host"] and not _alive(owner.get("pid")):
                    self.path.unlink(missing_ok=True)  # stale: its process is gone
                    continue
                if not owner:  # being written by the other process right now
                    time.sleep(0.2)
                    continue
                raise RunDirRefused(f"{self.path.parent} is in use by pid {owner.get('pid')} on {owner.get('host')} "
                                  f"(since {owner.get('since')}): wait for it to finish, or delete {self.path} "
                                  "if that process is gone") from None
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(me, f)
            self.held = True
            return self
        raise RunDirRefused(f"cannot take the lock {self.path}: delete it if no other run uses {self.path.parent}")

    def release(self) -> None:
        if self.held and self._owner().get("pid") == os.getpid():
            self.path.unlink(missing_ok=True)
        self.held = False

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _alive(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True

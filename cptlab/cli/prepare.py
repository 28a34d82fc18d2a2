"""cptlab-prepare: the tokenizer and token caches of a run, built into the shared cache, and nothing else (no
model, no training), on the same config as cptlab-train. A cluster job array fills the cache this way before
the training jobs start; each training job then finds every tokenizer and shard ready.

    cptlab-prepare experiment=demo_zh                       # everything a cptlab-train run would tokenize
    cptlab-prepare -m hydra/launcher=submitit_slurm data=files data.domains.new.sources='[/data/zh/*.jsonl.zst]' \\
        prepare.groups=64 'prepare.group=range(64)'          # 64 jobs, each every 64th source file
    cptlab-prepare data=files data.domains.new.sources=...  # then once more: links the shards into domains
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

import cptlab.config  # noqa: F401  (registers the schema and resolvers before Hydra composes)
from cptlab.cli import exit_if_jobs_failed, exit_with_error, full_error
from cptlab.errors import CptlabError, Interrupted, in_job, interrupt_on_signals, no_space
from cptlab.utils.console import CONF_DIR, one_line, quiet_libraries

# Where a prepare job's own Hydra output (.hydra/, the tokenizer copy) goes: never a training run's directory.
RUN_DIR = "hydra.run.dir='${paths.runs_dir}/prepare/${name}/${run_name:${hydra:job.override_dirname}}'"
SWEEP_DIR = "hydra.sweep.dir='${paths.runs_dir}/prepare/${name}/multirun'"
JOB_NAME = "hydra.job.name=prepare"  # its log is prepare.log (conf/train.yaml names cptlab-train's job "train")
FAILED: list[str] = []


def prepare(cfg: DictConfig, run_dir: Path, log=print) -> dict:
    """Build the run's tokenizer and, per domain, its token cache (prepare.groups=1) or shard group
    prepare.group of prepare.groups; returns what was built, per domain."""
    from cptlab.data.tokens import prepare_shards
    from cptlab.run import pipeline
    from cptlab.run.plan_values import parts_of

    started = time.perf_counter()
    parts = parts_of(cfg)
    data = parts.data
    tokenizer_dir = pipeline.build_tokenizer(parts, run_dir)
    log(f"tokenizer: {tokenizer_dir} ({time.perf_counter() - started:.1f} s)")
    group, groups = int(cfg.prepare.group), int(cfg.prepare.groups)
    out = {}
    if cfg.prepare.tokenizer_only:
        return out
    if groups == 1:
        for domain in pipeline.build_data(data, tokenizer_dir):
            out[domain.name] = {"dir": str(domain.dir), "shards": len(domain.train_parts()),
                                "train_tokens": domain.n_train_tokens, "heldout_tokens": domain.n_val_tokens}
            log(f"{domain.name}: {domain.n_train_tokens:,} train + {domain.n_val_tokens:,} held-out tokens in "
                f"{len(domain.train_parts())} shard(s), {domain.dir}")
    else:
        for spec in data.specs:
            n = prepare_shards(spec, tokenizer_dir, data.cache_dir, group=group, groups=groups, seed=data.split_seed,
                               num_proc=data.num_proc, on_bad_text=data.on_bad_text, progress=pipeline.show_progress())
            out[spec.name] = {"group": group, "groups": groups, "shards": n}
            log(f"{spec.name}: shard group {group} of {groups} ready ({n} shard(s))")
    log(f"prepared in {time.perf_counter() - started:.1f} s")
    return out


def job(cfg: DictConfig) -> None:
    """One Hydra job of cptlab-prepare: the config validated, the tokenizer and token caches built."""
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        in_job(True)  # a signal from here on is an Interrupted error: the build in progress cleans up
        from cptlab.run.validate import validate

        quiet_libraries()
        validate(cfg)
        prepare(cfg, run_dir)
    except Exception as err:
        err = no_space(err) or err  # a full disk: one line naming the path
        message = str(err) if isinstance(err, CptlabError) else one_line(err)
        if full_error():
            raise
        print(f"cptlab-prepare: error: {message}", file=sys.stderr)
        if HydraConfig.get().mode == RunMode.MULTIRUN and not isinstance(err, Interrupted):  # a signal stops all
            FAILED.append(f"{run_dir}: {message}")
            return
        sys.exit(getattr(err, "exit_status", 2) if isinstance(err, CptlabError) else 1)
    finally:
        in_job(False)


@hydra.main(config_path=str(CONF_DIR), config_name="train", version_base="1.3")
def hydra_main(cfg: DictConfig) -> None:
    """Hydra's own front end, for commands with Hydra's flags (--help, --cfg, --config-dir...)."""
    job(cfg)


def main() -> None:
    """The `cptlab-prepare` console script: Hydra's output goes under runs/prepare/ unless the command says
    otherwise; the command is composed once (cptlab.cli.hydra_app), a bad override or a run name leading outside
    CPTLAB_RUNS is one line and exit status 2 before Hydra starts; a failed job of a multirun makes the command
    exit non-zero at the end."""
    from cptlab.cli.hydra_app import compose_command
    from cptlab.run.sweep import plain_overrides

    interrupt_on_signals("cptlab-prepare")  # SIGTERM: one line, exit status 143 (cptlab.errors)
    argv = sys.argv[1:]
    given = {a.split("=")[0] for a in argv}
    argv += [d for d in (RUN_DIR, SWEEP_DIR, JOB_NAME) if d.split("=")[0] not in given]
    if not plain_overrides(argv):  # Hydra's own flags: Hydra's front end
        sys.argv[1:] = argv
        hydra_main()
    else:
        try:
            from cptlab.run.guard import check_run_name

            command = compose_command(argv, "prepare")
            check_run_name(command.cfg)
        except Exception as err:
            exit_with_error("cptlab-prepare", err)
        command.run(job)
    exit_if_jobs_failed("cptlab-prepare", FAILED)


if __name__ == "__main__":
    main()

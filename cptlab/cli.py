"""The `cptlab-train` console script: compose-time errors turned into one line before Hydra (and torch) start."""

from __future__ import annotations

import os
import sys

from cptlab.utils.console import CONF_DIR, one_line

# Hydra flags after which the arguments are not plain overrides (help, info, other config dirs).
_PASSTHROUGH = ("--help", "-h", "--hydra-help", "--info", "-i", "--cfg", "-c", "--config-path", "-cp",
                "--config-name", "-cn", "--config-dir", "-cd", "--shell-completion", "-sc", "--resolve",
                "--package", "-p", "--version")


def first_sweep_point(overrides: list[str]) -> list[str]:
    """Each override with a sweep (`a=1,2`, `range(...)`) replaced by its first value."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    out = []
    for ov in OverridesParser.create().parse_overrides(overrides):
        if ov.is_sweep_override():
            first = next(iter(ov.sweep_string_iterator()))
            out.append(f"{ov.get_key_element()}={first}")
        else:
            out.append(ov.input_line)
    return out


def precheck_overrides(argv: list[str]) -> None:
    """Compose the config once with the command's overrides so that an unknown key, a wrong type or a
    missing group option fails with one line and no traceback."""
    if any(a.split("=")[0] in _PASSTHROUGH for a in argv):
        return
    overrides = [a for a in argv if a not in ("-m", "--multirun")]
    from hydra import compose, initialize_config_dir

    import cptlab.config  # noqa: F401  (schema and resolvers)

    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("train", overrides=first_sweep_point(overrides), return_hydra_config=True)
        precheck_run_dir(cfg, multirun=len(overrides) < len(argv))
    except Exception as err:  # Hydra/OmegaConf errors: the message is what the user needs
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"cptlab-train: error: {one_line(err)}", file=sys.stderr)
        sys.exit(2)


def precheck_run_dir(cfg, multirun: bool) -> None:
    """Run and cache directories writable, the run directory free and started with these inputs: said in one
    line before Hydra writes its files and log there (cptlab.run.guard)."""
    from hydra.core.hydra_config import HydraConfig

    from cptlab.run.guard import precheck_run_dir as check

    HydraConfig.instance().set_config(cfg)  # resolves ${hydra:...} in the run directory's name
    try:
        check(cfg, multirun)
    finally:
        HydraConfig.instance().cfg = None


def train_main() -> None:
    """The `cptlab-train` console script: config errors are reported before torch is even imported."""
    precheck_overrides(sys.argv[1:])
    from cptlab.train import FAILED_RUNS, hydra_main

    hydra_main()
    if FAILED_RUNS:
        print(f"cptlab-train: {len(FAILED_RUNS)} job(s) of the sweep failed:", file=sys.stderr)
        for line in FAILED_RUNS:
            print(f"  {line}", file=sys.stderr)
        sys.exit(1)

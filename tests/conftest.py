"""Test-wide settings: caches and runs in a temporary directory, CPU only, quiet, offline."""

import os
import shutil
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = ROOT / "conf"


_BASE: list[Path] = []


def pytest_configure(config):
    base = Path(tempfile.mkdtemp(prefix="cptlab-tests-"))
    _BASE.append(base)
    os.environ.setdefault("CPTLAB_CACHE", str(base / "cache"))
    os.environ["CPTLAB_RUNS"] = str(base / "runs")
    os.environ["CI"] = "true"
    os.environ["WANDB_MODE"] = "offline"
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_unconfigure(config):
    """The session's scratch caches and runs go with it (a multi-GB leftover per session otherwise)."""
    for base in _BASE:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def compose_cfg():
    """compose_cfg(overrides, output_dir) -> the composed config, as a test would see the CLI's."""
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    import cptlab.config  # noqa: F401

    def _compose(overrides, output_dir=None):
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("train", overrides=list(overrides))
        if output_dir is not None:
            with open_dict(cfg):
                cfg.paths.output_dir = str(output_dir)
        return cfg

    return _compose


@pytest.fixture
def spy(monkeypatch):
    """spy(module, "name") replaces module.name for the test with a wrapper that records each call's
    keyword arguments in the returned list and then calls the real function."""
    def install(module, name: str) -> list[dict]:
        calls, real = [], getattr(module, name)

        def wrapper(*args, **kwargs):
            calls.append(kwargs)
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, wrapper)
        return calls

    return install


@pytest.fixture
def sigkill_at_first_checkpoint():
    """sigkill_at_first_checkpoint(proc, run_dir, timeout) (kill_at_first_checkpoint below)."""
    return kill_at_first_checkpoint


def kill_at_first_checkpoint(proc, run_dir: Path, timeout: float) -> None:
    """Wait for `proc` (a cptlab-train subprocess) to write run_dir's last.ckpt, then SIGKILL it (no handler runs):
    the crash an exact resume must survive. Fails if the run ended first."""
    import signal
    import time

    ckpt = Path(run_dir) / "checkpoints" / "last.ckpt"
    deadline = time.time() + timeout
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()

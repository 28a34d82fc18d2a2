"""Test-wide settings: caches and runs in a temporary directory, CPU only, quiet, offline."""

import contextlib
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


@contextlib.contextmanager
def hydra_initialized(config_dir: Path = CONF_DIR):
    """Hydra initialised on `config_dir` (the checkout's conf/ by default) for the block, as cptlab-train
    initialises it: what Hydra's own `compose` needs (compose_train; cptlab.run.sweep.check_jobs).
    The one place the tests initialise Hydra."""
    from hydra import initialize_config_dir

    import cptlab.config  # noqa: F401  (schema and resolvers)

    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        yield


def compose_train(overrides, output_dir=None, *, hydra_node: bool = False, config_dir: Path = CONF_DIR):
    """The config `cptlab-train <overrides>` composes, as a test would see the CLI's; with `output_dir`,
    paths.output_dir set to it; with `hydra_node`, the `hydra` node kept (return_hydra_config: for HydraConfig
    and cptlab.run.sweep.job_overrides); from another config directory with `config_dir` (a copy of conf/).
    The one place the tests compose the app's config: use it through the compose_cfg fixture."""
    from hydra import compose
    from omegaconf import open_dict

    with hydra_initialized(config_dir):
        cfg = compose("train", overrides=list(overrides), return_hydra_config=hydra_node)
    if output_dir is not None:
        with open_dict(cfg):
            cfg.paths.output_dir = str(output_dir)
    return cfg


@pytest.fixture(scope="session")
def compose_cfg():
    """compose_cfg(overrides, output_dir=None, *, hydra_node=False, config_dir=CONF_DIR) -> the composed config
    (compose_train above). Session-scoped (it holds no state), so module-scoped fixtures can compose too."""
    return compose_train


@pytest.fixture(scope="session")
def hydra_conf():
    """hydra_conf(config_dir=CONF_DIR): a context manager, Hydra initialised on conf/ for the block
    (hydra_initialized above), for code under test that calls Hydra's `compose` itself."""
    return hydra_initialized


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

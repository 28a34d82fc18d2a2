"""One pass from command to fit: a cptlab-train command composes each config once, validates it once, and takes
the run directory's lock and compares its inputs once per run (the front end does it, the job does not redo it)."""

import sys

import pytest
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig

import cptlab.cli.train
import cptlab.cli.train_app
import cptlab.run.guard
import cptlab.run.validate
from cptlab.rundir.summary import read_summary

SMOKE = ["debug=smoke", "tokenizer=train", "trainer.max_steps=2", "eval.every_n_steps=2", "checkpoint.every_n_steps=2"]


@pytest.fixture
def counted(spy, monkeypatch):
    """Every compose (Hydra's config loader), validation, run-lock acquisition, input check and fingerprint of the
    inputs, as lists of calls."""
    calls = {
        "compose": spy(ConfigLoaderImpl, "load_configuration"),
        "lock": spy(cptlab.run.guard.RunLock, "acquire"),
        "inputs": spy(cptlab.run.guard, "check_inputs"),
        "fingerprint": spy(cptlab.run.guard, "run_inputs"),  # reading every source: the costly part of the check
    }
    calls["validate"] = spy(cptlab.run.validate, "validate")  # the job binds it too: one spy for both
    monkeypatch.setattr(cptlab.cli.train_app, "validate", cptlab.run.validate.validate)  # the job's own binding
    monkeypatch.setattr(cptlab.cli.train_app, "check_inputs", cptlab.run.guard.check_inputs)
    yield calls
    GlobalHydra.instance().clear()
    HydraConfig.instance().cfg = None  # later in-process runs must not see this run's Hydra state


def cptlab_train(monkeypatch, *args: str) -> None:
    monkeypatch.setattr(sys, "argv", ["cptlab-train", *args])
    cptlab.cli.train.train_main()


def test_a_run_composes_validates_locks_and_checks_inputs_once(counted, monkeypatch, tmp_path):
    run_dir = tmp_path / "run"
    cptlab_train(monkeypatch, *SMOKE, f"hydra.run.dir={run_dir}")
    assert read_summary(run_dir)["status"] == "completed"
    assert [len(counted[k]) for k in ("compose", "validate", "lock", "inputs", "fingerprint")] == [1, 1, 1, 1, 1]
    assert not (run_dir / ".cptlab.lock").exists()  # released
    for calls in counted.values():  # a second time: it finds the run completed, having compared its inputs
        calls.clear()
    cptlab_train(monkeypatch, *SMOKE, f"hydra.run.dir={run_dir}")
    assert [len(counted[k]) for k in ("compose", "validate", "lock", "inputs", "fingerprint")] == [1, 1, 1, 1, 1]


def test_a_sweep_composes_each_job_once_and_checks_each_once(counted, monkeypatch, tmp_path):
    trained = []
    monkeypatch.setattr(cptlab.cli.train_app, "train",
                        lambda cfg, run_dir, **kw: trained.append((kw["plan"], kw["inputs"])) or ({}, True))
    cptlab_train(monkeypatch, "-m", *SMOKE, "seed=0,1", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    # Each job is handed the plan the sweep's check built for it (its seed), and the inputs it compared.
    assert [(plan.cfg.seed, inputs is not None) for plan, inputs in trained] == [(0, True), (1, True)]
    # The sweep's own config, then each job once: the launcher is handed the jobs the front end checked.
    assert len(counted["compose"]) == 3
    assert [len(counted[k]) for k in ("validate", "lock", "inputs", "fingerprint")] == [2, 2, 2, 2]

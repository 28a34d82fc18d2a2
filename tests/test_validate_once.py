"""A run validates its config exactly once (the CLI validates, then trains without validating again)."""

import sys

from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig

import cptlab.cli.train_app


def test_a_cli_run_validates_its_config_once(spy, monkeypatch, tmp_path):
    calls = spy(cptlab.cli.train_app, "validate")
    run_dir = tmp_path / "run"
    monkeypatch.setattr(sys, "argv", ["cptlab-train", "debug=smoke", "tokenizer=train", "trainer.max_steps=2",
                                      "eval.every_n_steps=2", "checkpoint.every_n_steps=2", f"hydra.run.dir={run_dir}"])
    try:
        cptlab.cli.train_app.hydra_main()
    finally:
        GlobalHydra.instance().clear()
        HydraConfig.instance().cfg = None  # later in-process runs must not see this run's Hydra state
    assert (run_dir / "summary.json").is_file()
    assert cptlab.cli.train_app.read_summary(run_dir)["status"] == "completed"
    assert len(calls) == 1

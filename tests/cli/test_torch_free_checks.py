"""A config error is answered before torch loads: composing and validating a run imports none of the heavy
libraries (torch, transformers, peft, Lightning, lm-eval), so a typo costs a second, not the seconds torch takes.
(Reading a local base's config.json does load transformers, and with it torch: cptlab.model.source.)"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "transformers", "peft", "pytorch_lightning", "lm_eval")


def heavy_imports(code: str) -> tuple[list[str], str]:
    """The heavy libraries loaded once `code` has run in a fresh interpreter, and its stderr."""
    probe = f"import json, sys\n{code}\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))\n"
    proc = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


def test_the_checks_import_no_heavy_library():
    loaded, _ = heavy_imports("import cptlab.cli.train, cptlab.cli.hydra_app, cptlab.run.validate, cptlab.run.guard, "
                              "cptlab.run.sweep")
    assert loaded == []


@pytest.mark.parametrize("args, message", [
    (["experiment=demo_zh", "data.replay_ratio=1.5"], "data.replay_ratio=1.5 must be in [0, 1)"),
    # Job 1 is valid (debug=smoke: the demo base's stand-in, no base directory to read), job 2 is not.
    (["-m", "experiment=demo_zh", "debug=smoke", "data.replay_ratio=0.25,1.5"], "job 2 of 2 (data.replay_ratio=1.5)"),
])
def test_a_bad_value_is_refused_before_torch_loads(tmp_path, args, message):
    code = (f"sys.argv = ['cptlab-train', *{args!r}, 'hydra.run.dir={tmp_path / 'run'}', "
            f"'hydra.sweep.dir={tmp_path / 'sweep'}']\n"
            "from cptlab.cli.train import train_main\n"
            "try:\n    train_main()\nexcept SystemExit as exit:\n    assert exit.code == 2, exit.code\n")
    loaded, stderr = heavy_imports(code)
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cptlab-train: error: ") and message in lines[0], stderr[-2000:]
    assert loaded == []
    assert not (tmp_path / "run").exists() and not (tmp_path / "sweep").exists()

"""Every study point of experiments/*/run.sh composes and passes validation, so a typo in an override fails here
in seconds rather than after hours of CPU: each `study_runs NAME OVERRIDES...` line of a run.sh is expanded into
its sweep points (comma-separated values, as Hydra's multirun does) and validated as experiments/lib.sh runs it
(experiment=demo_zh, 100 steps or $STEPS, evaluation every 20 steps), under debug=smoke for the missing demo base."""

from __future__ import annotations

import itertools
import re
import shlex
from pathlib import Path

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from cptlab.run.validate import validate

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
PARSER = OverridesParser.create()
LINE = re.compile(r"^\s*(?:STEPS=(\d+)\s+)?study_runs\s+(.*)$")


def study_points() -> list[tuple[str, list[str]]]:
    points = []
    for script in sorted(EXPERIMENTS.glob("*/run.sh")):
        for line in script.read_text(encoding="utf-8").splitlines():
            match = LINE.match(line.split("#", 1)[0])
            if not match:
                continue
            steps, rest = match.groups()
            name, *overrides = shlex.split(rest)
            choices = [[f"{key}={v}" for v in value.split(",")] for key, value in (o.split("=", 1) for o in overrides)]
            for point in itertools.product(*choices):
                label = f"{script.parent.name}/{name}:{','.join(point) or 'baseline'}"
                points.append((label, [f"trainer.max_steps={steps or 100}", "eval.every_n_steps=20", *point]))
    return points


POINTS = study_points()


def test_every_study_has_points():
    studies = {label.split("/")[0] for label, _ in POINTS}
    assert {"replay", "levers", "schedules", "retention", "vocab_init", "lora_rank"} <= studies


@pytest.mark.parametrize("overrides", [o for _, o in POINTS], ids=[label for label, _ in POINTS])
def test_study_point_composes_and_validates(compose_cfg, overrides):
    cfg = compose_cfg(["experiment=demo_zh", "debug=smoke", "seed=0", *overrides])
    validate(cfg)
    for override in overrides:  # each value override reached the config (debug=smoke does not undo it)
        key = override.split("=", 1)[0]
        node = OmegaConf.select(cfg, key)
        if not key.startswith(("trainer.max_steps", "eval.every_n_steps")) and not OmegaConf.is_config(node):
            assert node == PARSER.parse_override(override).value(), override

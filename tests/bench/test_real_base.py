"""`python -m benchmarks --quick --only real_base` runs the real-base benchmark's code (debug=smoke: a tiny model
of SmolLM2's architecture) and writes its ratio keys (slow; `make test-all`). Without the real extra it is
skipped with the reason in the JSON. Nothing about speed or memory is asserted."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import real_base

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_quick_real_base_writes_its_ratios(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--only", "real_base", "--out", str(out),
                           "--workdir", str(tmp_path / "work")], capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert set(data["benchmarks"]) == {"real_base"}
    assert sorted(data["ratios"]) == sorted(real_base.RATIO_KEYS)
    reason = real_base.available()
    if reason:
        assert data["benchmarks"]["real_base"]["details"]["skipped"] == reason
        return
    sides = data["benchmarks"]["real_base"]["details"]["sides"]
    assert set(sides) == set(real_base.SIDES)
    assert [r["chunked_loss"] for r in sides["cptlab_chunked"]["runs"]] == [True]
    assert [r["chunked_loss"] for r in sides["cptlab"]["runs"]] == [False]
    for key in real_base.RATIO_KEYS:
        value = data["ratios"][key]["value"]
        assert isinstance(value, float) and math.isfinite(value) and value > 0, key
    for side, stat in sides.items():  # where each side's memory goes (params, grads, optimizer, activations)
        memory = stat["runs"][0]["memory"]
        assert min(memory[k] for k in ("params", "grads", "optimizer_state", "saved_for_backward")) > 0, side
        assert sum(total for _, total in memory["saved_by_shape"].values()) <= memory["saved_for_backward"], side
    for lora, full in (("hf_lora", "hf"), ("cptlab_lora", "cptlab")):  # LoRA: less optimizer state than full
        assert sides[lora]["runs"][0]["memory"]["optimizer_state"] < sides[full]["runs"][0]["memory"]["optimizer_state"]


@pytest.mark.parametrize("side", real_base.CPTLAB_SIDES)
def test_every_cptlab_side_composes_a_valid_run(side, tmp_path):
    """Each side's overrides pass cptlab's validation; the chunked ones set model.chunked_loss, the full-work ones
    train everything (the baseline's work), the LoRA ones the experiment's LoRA + new rows from the first step (the
    peft baseline's work), the zh ones keep the experiment's two stages."""
    if real_base.available():
        pytest.skip(real_base.available())
    from benchmarks.training import compose

    cfg = compose(real_base.base_overrides(tmp_path / "cache", 8, 2, quick=False) + real_base.SIDE_OVERRIDES[side],
                  tmp_path / "run")
    assert cfg.model.chunked_loss == side.endswith("_chunked")
    assert cfg.data.doc_masking == (side == "cptlab_doc_masking")
    expected = {"hf": ("full", "none"), "hf_lora": ("full", "lora"), "cptlab": ("full", "none")}[real_base.BASELINE[side]]
    if side.startswith("cptlab_zh"):  # the experiment's own two stages
        expected = ("two_stage", "lora")
    assert (cfg.schedule.name, cfg.adapter.name) == expected
    if cfg.adapter.name == "lora":  # the experiment's LoRA, which hf_lora is given too
        assert (cfg.adapter.r, cfg.adapter.train_new_tokens) == (16, True)
    assert (cfg.data.seq_len, cfg.data.batch_size) == (128, 8)  # experiment=smollm2_zh's


def test_real_sides_are_checked_and_passed_on(monkeypatch, capsys):
    """--real-sides: an unknown side stops the command in one line before any work; known ones reach real_base.run."""
    from benchmarks import run as bench_run

    with pytest.raises(SystemExit) as stop:
        bench_run.main(["--only", "real_base", "--real-sides", "hf_lora,nope"])
    assert stop.value.code == 2 and "--real-sides: unknown side(s) ['nope']" in capsys.readouterr().err
    seen = {}

    def fake_run(ctx, rounds=1, sides=real_base.SIDES):
        seen["sides"], seen["rounds"] = sides, rounds
        raise RuntimeError("stop here")

    monkeypatch.setattr(real_base, "run", fake_run)
    bench_run.main(["--only", "real_base", "--real-sides", "hf_lora,cptlab_lora", "--real-rounds", "2",
                    "--out", "/dev/null"])
    assert seen == {"sides": ("hf_lora", "cptlab_lora"), "rounds": 2}

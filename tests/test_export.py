"""cptlab-export: a run trained in this process (smoke config, LoRA / DoRA) exported as a merged Hugging
Face model whose logits equal the trained module's, as a peft adapter that round-trips through
PeftModel.from_pretrained, and errors as one line with exit status 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ["experiment=demo_zh", "debug=smoke", "trainer.max_steps=4", "eval.every_n_steps=4",
         "checkpoint.every_n_steps=4", "adapter.dropout=0.1"]


def train_in_process(compose_cfg, run_dir: Path, overrides: list[str]):
    """What cptlab-train does, keeping the trained module: config saved as Hydra would, then fit."""
    from cptlab.run.build import build_run
    from cptlab.run.validate import validate

    cfg = compose_cfg([*SMOKE, *overrides], output_dir=run_dir)
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    built = build_run(validate(cfg), run_dir)
    run = built.lightning
    built.fit()
    run.trainer.save_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    run.module.eval()
    batch = run.evaluator.eval_sets["zh"][:3, :-1]
    with torch.no_grad():
        logits = run.module(batch)
    return run, batch, logits


@pytest.fixture
def trained(compose_cfg, tmp_path):
    def _train(*overrides):
        run_dir = tmp_path / "run"
        run, batch, logits = train_in_process(compose_cfg, run_dir, list(overrides))
        return run_dir, run, batch, logits
    return _train


def cptlab_export(*args):
    return subprocess.run([sys.executable, "-m", "cptlab.cli.export", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "HYDRA_FULL_ERROR": ""})


@pytest.mark.parametrize("adapter", ["lora", "dora"])
def test_merged_export_has_the_trained_logits_and_generates(trained, tmp_path, adapter):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cptlab.run.export import export_run

    run_dir, run, batch, logits = trained(f"adapter={adapter}", "adapter.r=4")
    out = export_run(run_dir, tmp_path / "export")
    assert not (out / "adapter_config.json").exists()
    model = AutoModelForCausalLM.from_pretrained(out)
    assert type(model).__name__ == "LlamaForCausalLM"
    with torch.no_grad():
        got = model(input_ids=batch).logits
    torch.testing.assert_close(got, logits, atol=1e-5, rtol=0)
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = tokenizer("人民日报", return_tensors="pt").input_ids
    generated = model.generate(ids, max_new_tokens=4, do_sample=False)
    assert generated.shape[1] == ids.shape[1] + 4


def test_adapter_only_export_round_trips_through_peft(trained, tmp_path):
    from peft import PeftModel

    from cptlab.run.export import build_base, export_run

    run_dir, run, batch, logits = trained("adapter=lora", "adapter.r=4", "schedule=two_stage",
                                          "schedule.stage1_steps=2", "schedule.stage1_rows=all")
    out = export_run(run_dir, tmp_path / "adapter", adapter_only=True)
    assert (out / "adapter_config.json").is_file() and (out / "tokenizer.json").is_file()
    model = PeftModel.from_pretrained(build_base(run_dir), out)
    model.eval()
    with torch.no_grad():
        got = model(input_ids=batch).logits
    torch.testing.assert_close(got, logits, atol=1e-5, rtol=0)
    # stage 1 trained every embedding row: the adapter carries the whole matrices
    assert sorted(model.peft_config["default"].modules_to_save) == ["embed_tokens", "lm_head"]


def test_a_run_without_adapter_exports_whole_and_refuses_adapter_only(trained, tmp_path):
    from transformers import AutoModelForCausalLM

    from cptlab.errors import CptlabError
    from cptlab.run.export import export_run

    run_dir, run, batch, logits = trained("schedule=two_stage", "schedule.stage1_steps=2", "schedule.stage1_rows=all")
    out = export_run(run_dir, tmp_path / "export")
    with torch.no_grad():
        got = AutoModelForCausalLM.from_pretrained(out)(input_ids=batch).logits
    torch.testing.assert_close(got, logits, atol=1e-5, rtol=0)
    with pytest.raises(CptlabError, match="no adapter"):
        export_run(run_dir, tmp_path / "adapter", adapter_only=True)
    with pytest.raises(CptlabError, match="no EMA weights"):
        export_run(run_dir, tmp_path / "ema", weights="ema")
    # re-exporting over an export replaces it; a directory that is not an export is never replaced
    assert export_run(run_dir, out) == out
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(CptlabError, match="not a model export"):
        export_run(run_dir, precious)
    assert (precious / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("adapter", ["none", pytest.param("lora", marks=pytest.mark.slow)])
def test_ema_export_has_the_ema_weights_logits(trained, tmp_path, adapter):
    """`cptlab-export --weights ema` on a retention=ema run: the exported model computes what the module
    computes with the EMA weights swapped in, which differs from the raw trained weights' logits."""
    from transformers import AutoModelForCausalLM

    from cptlab.cli.export import main
    from cptlab.training.retention.ema import EMA

    run_dir, run, batch, logits = trained("retention=ema", "retention.decay=0.5", "retention.every_n_steps=2",
                                          f"adapter={adapter}", *(["adapter.r=4"] if adapter == "lora" else []))
    ema = next(c for c in run.trainer.callbacks if isinstance(c, EMA))
    assert ema.every == 2 and ema.last_step == 4
    with torch.no_grad(), ema.swapped(run.module.model):
        expected = run.module(batch)
    assert (expected - logits).abs().max() > 1e-3  # the average is not the raw weights
    main([str(run_dir), "--out", str(tmp_path / "ema"), "--weights", "ema"])
    with torch.no_grad():
        got = AutoModelForCausalLM.from_pretrained(tmp_path / "ema")(input_ids=batch).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_cli_errors_are_one_line_with_exit_status_2(tmp_path, capsys):
    from cptlab.cli.export import main

    missing = cptlab_export(tmp_path / "nope", "--out", tmp_path / "out")
    assert missing.returncode == 2, missing.stderr
    lines = [line for line in missing.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("cptlab-export: error: run directory not found"), missing.stderr

    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text("name: x\n")
    (run_dir / "tokenizer").mkdir()
    with pytest.raises(SystemExit) as info:
        main([str(run_dir), "--out", str(tmp_path / "out")])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cptlab-export: error:") and "last.ckpt not found" in err[0]
    assert not (tmp_path / "out").exists()

"""LoRA + vocabulary extension as users run it, in subprocesses: a smoke demo base, then
`experiment=demo_zh_lora` on it with an extended tokenizer (stage 1: new rows only; stage 2: LoRA + new
rows), then cptlab-export merged and adapter-only. Old embedding/output rows come out bit for bit."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def run(module, *args, timeout=300):
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "HYDRA_FULL_ERROR": ""})


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("adapters")
    base = tmp / "base"
    proc = run("cptlab.cli.train_app", "experiment=demo_base", "debug=smoke", "trainer.max_steps=2", f"publish_dir={base}",
               f"hydra.run.dir={tmp / 'base_run'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = tmp / "lora"
    proc = run("cptlab.cli.train_app", "experiment=demo_zh_lora", "debug=smoke", f"model.name_or_path={base}",
               "model.random_init=false",  # the published base's weights, whose old rows must come out unchanged
               "tokenizer=extend", "tokenizer.vocab_size=2000", "schedule.stage1_steps=4", "schedule.stage1_rows=new",
               f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return base, run_dir, tmp


def test_smoke_run_completes_and_checkpoint_holds_only_trained_state(lora_run):
    base, run_dir, _ = lora_run
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 8
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(int(r["step"]) for r in rows if r["train/loss"]) == [2, 4, 6, 8]
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    state = ckpt["cptlab"]
    assert state["phase"] == 1
    base_rows = state["base_rows"]
    assert base_rows == summary["vocabulary"]["base_rows"] < summary["vocabulary"]["final_tokens"]
    assert ckpt["state_dict"] and all("lora_" in k for k in ckpt["state_dict"])
    assert len(state["rows"]) == 2 and all(v["start"] == base_rows for v in state["rows"].values())


def test_merged_export_keeps_old_rows_bitwise_and_generates(lora_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base, run_dir, tmp = lora_run
    out = tmp / "merged"
    proc = run("cptlab.cli.export", run_dir, "--out", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert str(out) in proc.stdout
    model = AutoModelForCausalLM.from_pretrained(out)
    base_model = AutoModelForCausalLM.from_pretrained(base)
    n = base_model.get_input_embeddings().weight.shape[0]
    for get in ("get_input_embeddings", "get_output_embeddings"):
        old = getattr(base_model, get)().weight
        new = getattr(model, get)().weight
        assert new.shape[0] > n
        assert torch.equal(new[:n], old), get  # every old row bit for bit
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = tokenizer("人民日报社论", return_tensors="pt").input_ids
    assert model.generate(ids, max_new_tokens=4, do_sample=False).shape[1] == ids.shape[1] + 4


def test_adapter_only_export_loads_on_the_extended_base(lora_run):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from cptlab.run.export import build_base

    _, run_dir, tmp = lora_run
    merged, adapter = tmp / "merged2", tmp / "adapter"
    for args in ((run_dir, "--out", merged), (run_dir, "--out", adapter, "--adapter-only")):
        proc = run("cptlab.cli.export", *args)
        assert proc.returncode == 0, proc.stderr[-3000:]
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["trainable_token_indices"] and not config["modules_to_save"]
    peft_model = PeftModel.from_pretrained(build_base(run_dir), adapter).eval()
    plain = AutoModelForCausalLM.from_pretrained(merged).eval()
    ids = torch.randint(0, plain.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(peft_model(input_ids=ids).logits, plain(input_ids=ids).logits, atol=1e-5, rtol=0)
    # the adapter holds LoRA + the new rows, not the base's matrices
    assert (adapter / "adapter_model.safetensors").stat().st_size < (merged / "model.safetensors").stat().st_size / 2


@pytest.mark.slow
def test_two_stage_lora_under_cpu_ddp_matches_one_process(tmp_path):
    """Under DDP every parameter some phase trains keeps requires_grad (DDP registers them once) and the
    inactive ones have their gradients dropped: two processes give the single-process curve."""
    args = ["experiment=demo_zh_lora", "debug=smoke", "trainer.max_steps=6", "eval.every_n_steps=3",
            "trainer.log_every_n_steps=1", "optim.grad_clip=null", "schedule.stage1_steps=3", "adapter.dropout=0"]

    def curve(run_dir, *extra):
        proc = run("cptlab.cli.train_app", *args, *extra, f"hydra.run.dir={run_dir}", timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        with open(run_dir / "metrics.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        return {(int(r["step"]), k): float(v) for r in rows for k, v in r.items()
                if v and k not in ("step", "train/tokens_per_sec")}

    single = curve(tmp_path / "single")
    ddp = curve(tmp_path / "ddp", "trainer=ddp", "trainer.accelerator=cpu", "trainer.strategy=ddp_spawn",
                "trainer.devices=2", "trainer.precision=32-true")
    assert set(single) == set(ddp)
    for key, value in single.items():
        assert ddp[key] == pytest.approx(value, rel=1e-4, abs=1e-5), key

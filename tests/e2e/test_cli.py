"""The CLI as users run it, in a subprocess: a smoke run's files, and one-line errors."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def cptlab_train(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "cptlab.cli.train_app", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "HYDRA_FULL_ERROR": ""})


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run") / "demo_zh_smoke"
    proc = cptlab_train("experiment=demo_zh", "debug=smoke", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir, proc


def read_rows(run_dir):
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_smoke_run_writes_metrics_with_step0_eval(smoke_run):
    run_dir, _ = smoke_run
    rows = read_rows(run_dir)
    columns = set(rows[0].keys())
    for col in ("step", "train/loss", "train/tokens_per_sec", "train/replay_share", "lr", "trainer/tokens_seen",
                "val/en/loss", "val/en/ppl", "val/en/bpb", "val/en/delta_bpb", "val/zh/bpb", "val/zh/delta_bpb"):
        assert col in columns, col
    step0 = [r for r in rows if r["step"] == "0" and r["val/en/bpb"]]
    assert len(step0) == 1
    assert float(step0[0]["val/en/delta_bpb"]) == 0.0 and float(step0[0]["trainer/tokens_seen"]) == 0
    eval_steps = sorted(int(r["step"]) for r in rows if r["val/zh/bpb"])
    assert eval_steps == [0, 4, 8]
    train_steps = sorted(int(r["step"]) for r in rows if r["train/loss"])
    assert train_steps == [2, 4, 6, 8]
    last_tokens = max(float(r["trainer/tokens_seen"]) for r in rows if r["trainer/tokens_seen"])
    assert last_tokens == 8 * 8 * 64  # steps * batch * seq_len


def test_smoke_run_summary(smoke_run):
    run_dir, proc = smoke_run
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["error"] is None
    assert summary["steps"] == 8
    # 25% of 8 rows per batch is exactly 2 rows: the measured share is exact here.
    assert abs(summary["replay_share"] - 0.25) <= 1 / 8
    assert summary["replay_share"] == pytest.approx(0.25)
    assert set(summary["domains"]) == {"zh", "en", "en_eval"}  # en_eval: role eval (issue #25)
    assert summary["domains"]["en"]["role"] == "replay"
    assert summary["params"]["trainable"] == summary["params"]["total"] > 0
    assert summary["throughput"]["tokens_per_sec"] > 0
    assert set(summary["setup"]) == {"tokenizer_s", "data_s", "model_s"}
    assert 0 <= sum(summary["setup"].values()) <= summary["wall_time_s"]
    for key in ("plot", "metrics", "tokenizer", "checkpoint"):
        assert os.path.exists(summary["paths"][key]), key
    assert set(summary["tokens_per_char"]) == {"zh", "en", "en_eval"}
    assert "bpb @ step 0" in proc.stdout and str(run_dir) in proc.stdout


def test_rerunning_a_completed_run_does_not_train_again(smoke_run):
    run_dir, _ = smoke_run
    before = (run_dir / "metrics.csv").read_text()
    proc = cptlab_train("experiment=demo_zh", "debug=smoke", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0
    assert "already completed" in proc.stdout
    assert (run_dir / "metrics.csv").read_text() == before


@pytest.mark.parametrize("override, fragment", [
    ("no_such_key=1", "no_such_key"),
    ("data.replay_ratio=abc", "data.replay_ratio"),
    ("data=nope", "data/nope"),
    ("data.replay_ratio=1.5", "data.replay_ratio=1.5"),
    ("data.batch_size=0", "data.batch_size=0"),
    ("data.domains.zh.sources=[/no/such/file.txt]", "/no/such/file.txt"),
])
def test_bad_input_fails_at_once_with_one_line(tmp_path, override, fragment):
    proc = cptlab_train("experiment=demo_zh", "debug=smoke", override, f"hydra.run.dir={tmp_path / 'r'}", timeout=120)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("cptlab-train: error:") and fragment in lines[0]
    assert "Traceback" not in proc.stderr


# Slow (`make test-all`): its EMA and KL losses stay in `make test` through tests/test_retention.py
@pytest.mark.slow
def test_mean_teacher_run_logs_ema_and_retention_metrics(tmp_path):
    run_dir = tmp_path / "mt"
    proc = cptlab_train("experiment=demo_zh", "debug=smoke", "retention=mean_teacher", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = read_rows(run_dir)
    assert {"val_ema/en/bpb", "val_ema/zh/delta_bpb", "train/retention_loss", "train/stage"} <= set(rows[0])
    step0 = next(r for r in rows if r["step"] == "0" and r["val/en/bpb"])
    assert float(step0["val_ema/en/bpb"]) == float(step0["val/en/bpb"])  # the average starts at the weights
    retention = [float(r["train/retention_loss"]) for r in rows if r["train/retention_loss"]]
    assert retention and all(x >= 0 for x in retention) and max(retention) > 0


# Slow (`make test-all`): what each option does stays in `make test` through its unit tests
# (data.doc_masking: tests/model/test_doc_masking.py).
@pytest.mark.slow
@pytest.mark.parametrize("option", [
    "data.doc_masking=true",  # training and evaluation with each document masked off from the others
])
def test_smoke_run_with_option(tmp_path, option):
    run_dir = tmp_path / "run"
    proc = cptlab_train("experiment=demo_zh", "debug=smoke", option, f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 8
    assert all(d["bpb_end"] > 0 for d in summary["domains"].values())
    key, value = option.split("=")
    recorded = json.loads((run_dir / "inputs.json").read_text())["config"]  # the run's settings, as recorded
    assert str(recorded[key]).lower() == value


def test_domains_and_stages_from_the_command_line_in_a_sweep(tmp_path):
    """`-m` with a domain added (`+data.domains.code={...}`), one removed (`~data.domains.en`) and two stages: the
    job trains on that mixture and logs and records it (each override form, composed: tests/test_overrides.py)."""
    sweep = tmp_path / "sweep"
    proc = cptlab_train("-m", "experiment=demo_zh", "debug=smoke", "trainer.max_steps=4",
                        "+data.domains.code={role: replay, sources: [demo:code]}", "~data.domains.en",
                        "data.stages=[{until_step: 2, replay_ratio: 0}, {replay_ratio: 0.5}]",
                        f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir,) = [p.parent for p in sweep.glob("*/summary.json")]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and set(summary["domains"]) == {"zh", "code", "en_eval"}
    mixture = summary["mixture"]
    assert [(s["from_step"], s["until_step"], s["replay_ratio"]) for s in mixture["stages"]] == [
        (0, 2, 0.0), (2, None, 0.5)]
    assert mixture["achieved"] == {"zh": 0.75, "code": 0.25}  # 2 batches without code, 2 with half of 8 rows
    mix = {int(r["step"]): float(r["train/mix/code"]) for r in read_rows(run_dir) if r.get("train/mix/code")}
    assert mix == {2: 0.0, 4: 0.25}  # on the steps (and tokens) axis of the other train metrics

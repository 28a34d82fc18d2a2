"""cptlab-merge on tiny runs trained in this process (a smoke base, then continued runs on it): alpha=0 scores the
run's step-0 bpb and alpha=1 its final bpb on every domain, the points between lie between; new token rows
interpolate from their seeded initial values, re-derived exactly; LoRA runs interpolate the adapter scale;
`--out` exports theta(alpha) as a plain model; errors are one line."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf, open_dict

from cptlab.errors import CptlabError
from cptlab.run.merge import export_merge, load_interpolation, merge_run, parse_alphas

ROOT = Path(__file__).resolve().parents[1]
RUN = ["experiment=demo_zh", "debug=smoke", "model.random_init=false", "trainer.max_steps=4",
       "eval.every_n_steps=2", "checkpoint.every_n_steps=4", "optim.lr=3e-3"]


def train_run(compose_cfg, run_dir: Path, overrides: list[str]) -> dict:
    """What `cptlab-train` does for one run, with its config saved where Hydra saves it."""
    from cptlab.cli.train_app import train

    cfg = compose_cfg(overrides, run_dir)
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    summary, _ = train(cfg, run_dir)
    assert summary["status"] == "completed", summary
    return summary


@pytest.fixture(scope="module")
def runs(tmp_path_factory, compose_cfg):
    root = tmp_path_factory.mktemp("merge")
    base = root / "base"
    cfg = compose_cfg(["experiment=demo_base", "debug=smoke", "trainer.max_steps=2"], root / "base_run")
    with open_dict(cfg):
        cfg.publish_dir = str(base)
    from cptlab.cli.train_app import train

    assert train(cfg, root / "base_run")[0]["status"] == "completed"
    on_base = [*RUN, f"model.name_or_path={base}"]
    extended = root / "extended"  # new rows initialised at random (seeded) and trained with the whole model
    train_run(compose_cfg, extended, [*on_base, "tokenizer=extend", "tokenizer.vocab_size=2000",
                                      "tokenizer.init=random"])
    lora = root / "lora"
    train_run(compose_cfg, lora, [*on_base, "tokenizer=base", "adapter=lora", "adapter.r=4", "adapter.dropout=0.0",
                                  "retention=ema", "retention.decay=0.5"])
    dora = root / "dora"  # DoRA on the extended vocabulary, its new rows trained beside the adapter
    train_run(compose_cfg, dora, [*on_base, "tokenizer=extend", "tokenizer.vocab_size=2000", "adapter=dora",
                                  "adapter.r=4", "adapter.dropout=0.0", "adapter.train_new_tokens=true"])
    return {"root": root, "base": base, "extended": extended, "lora": lora, "dora": dora}


def eval_points(run_dir: Path, prefix: str = "val") -> dict[int, dict[str, float]]:
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    out: dict[int, dict[str, float]] = {}
    for row in rows:
        for key, value in row.items():
            if key.startswith(f"{prefix}/") and key.endswith("/bpb") and value:
                out.setdefault(int(float(row["step"])), {})[key.split("/")[1]] = float(value)
    return out


@pytest.mark.parametrize("kind", ["extended", "lora", "dora"])
def test_endpoints_reproduce_step0_and_final_bpb_and_the_middle_lies_between(runs, kind):
    run_dir = runs[kind]
    record = merge_run(run_dir, [0.0, 0.5, 1.0])
    evals = eval_points(run_dir)
    first, last = evals[0], evals[max(evals)]
    points = {p["alpha"]: p for p in record["points"]}
    assert set(points[0.0]["bpb"]) == set(first) == {"zh", "en", "en_eval"}
    for domain in first:
        assert abs(points[0.0]["bpb"][domain] - first[domain]) <= 1e-6, domain
        assert abs(points[1.0]["bpb"][domain] - last[domain]) <= 1e-6, domain
        assert first[domain] != last[domain]
    zh = [points[a]["bpb"]["zh"] for a in (0.0, 0.5, 1.0)]
    assert min(zh[0], zh[2]) - 0.05 <= zh[1] <= max(zh[0], zh[2]) + 0.05  # the path between the two ends
    assert zh[1] not in (zh[0], zh[2])
    assert points[0.0]["learning"] == pytest.approx(0.0, abs=1e-6)
    assert points[0.0]["forgetting"] == pytest.approx(0.0, abs=1e-6)
    # beside the run: json, csv (re-running adds alphas), and the trade-off plot
    merge_run(run_dir, [0.25])
    saved = json.loads((run_dir / "merge.json").read_text())
    assert [p["alpha"] for p in saved["points"]] == [0.0, 0.25, 0.5, 1.0]
    with open(run_dir / "merge.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [float(r["alpha"]) for r in table] == [0.0, 0.25, 0.5, 1.0]
    assert float(table[-1]["val/zh/bpb"]) == pytest.approx(last["zh"], abs=1e-6)
    assert (run_dir / "merge.png").stat().st_size > 10_000


def test_ema_interpolates_towards_the_ema_weights(runs):
    run_dir = runs["lora"]
    record = merge_run(run_dir, [0.0, 1.0], weights="ema")
    first, ema = eval_points(run_dir)[0], eval_points(run_dir, "val_ema")
    points = {p["alpha"]: p for p in record["points"]}
    for domain in first:
        assert abs(points[0.0]["bpb"][domain] - first[domain]) <= 1e-6, domain
        assert abs(points[1.0]["bpb"][domain] - ema[max(ema)][domain]) <= 1e-6, domain
    assert (run_dir / "merge_ema.json").is_file() and (run_dir / "merge_ema.csv").is_file()


def test_new_rows_start_from_their_seeded_initial_values(runs):
    """theta_0 of the new token rows is re-derived by rebuilding the grown model with the run's config and seed
    (the init is random here): the same draw every time, another seed draws other rows; alpha=0's bpb equal
    to the run's step-0 bpb (the test above) shows it is the draw the run started from."""
    from cptlab.run import pipeline
    from cptlab.run.merge import _run_tokenizers
    from cptlab.run.plan_values import parts_of

    interp = load_interpolation(runs["extended"])
    base_rows, cfg = interp.run.base_rows, interp.run.cfg
    name = "model.embed_tokens.weight"
    start, end = interp.start[name], interp.end[name]
    assert start.shape[0] > base_rows
    _, tokenizer, base_tokenizer = _run_tokenizers(interp.run)
    again = load_interpolation(runs["extended"]).start[name]
    assert torch.equal(start, again)
    with open_dict(cfg):
        cfg.seed = cfg.seed + 1
    other, _ = pipeline.build_model(parts_of(cfg), tokenizer, base_tokenizer, adapter=cfg.adapter)
    other_rows = other.get_input_embeddings().weight.detach()
    assert torch.equal(other_rows[:base_rows], start[:base_rows])  # base rows: the base's
    assert not torch.equal(other_rows[base_rows:], start[base_rows:])  # new rows: the seed's draw
    assert not torch.equal(start[base_rows:], end[base_rows:])  # the run trained them
    interp.set(0.5)
    params = dict(interp.model.named_parameters())
    assert torch.allclose(params[name], (start + end) / 2, atol=1e-7)


def test_lora_interpolates_the_adapter_scale(runs):
    interp = load_interpolation(runs["lora"])
    assert interp.scalings and not any("lora_" in n for n in interp.start)
    layer_scaling, key, trained = interp.scalings[0]
    interp.set(0.25)
    assert layer_scaling[key] == pytest.approx(0.25 * trained)
    interp.set(1.0)
    assert layer_scaling[key] == trained


def test_out_exports_theta_alpha_as_a_plain_model_and_refuses_a_foreign_directory(runs, tmp_path):
    from transformers import AutoModelForCausalLM

    from cptlab.evaluation.bpb import eval_sums, metrics_from_sums
    from cptlab.run.merge import eval_sets

    out = export_merge(runs["lora"], 0.5, tmp_path / "half")
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    assert not (out / "adapter_config.json").exists()
    interp = load_interpolation(runs["lora"])
    blocks, token_bytes, _ = eval_sets(interp.run)
    interp.set(0.5)
    want = metrics_from_sums(eval_sums(interp.model, blocks["zh"], token_bytes, batch_size=8))["bpb"]
    got = metrics_from_sums(eval_sums(model, blocks["zh"], token_bytes, batch_size=8))["bpb"]
    assert got == pytest.approx(want, abs=1e-5)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(CptlabError, match="--out"):
        export_merge(runs["lora"], 0.5, foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"


def cli(*args):
    return subprocess.run([sys.executable, "-m", "cptlab.cli.merge", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "HYDRA_FULL_ERROR": ""})


def test_cli_scores_a_run_and_prints_the_table(runs):
    proc = cli(runs["extended"], "--alpha", "0,1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "alpha" in proc.stdout and "merge.json" in proc.stdout


@pytest.mark.parametrize("args, message", [
    (["--alpha", "0,x"], "--alpha 0,x: 'x' is not a number"),
    (["--alpha", "0,1", "--out", "somewhere"], "--out exports one model: give one --alpha"),
])
def test_cli_errors_are_one_line_with_exit_status_2(tmp_path, args, message):
    proc = cli(tmp_path, *args)
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"cptlab-merge: error: {message}") and proc.stderr.count("\n") == 1
    missing = cli(tmp_path / "nope")
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "run directory not found" in missing.stderr


def test_parse_alphas():
    assert parse_alphas("0, 0.5,1,0.5") == [0.0, 0.5, 1.0]
    with pytest.raises(CptlabError, match="is not finite"):
        parse_alphas("0,inf")


def test_compare_draws_the_interpolation_beside_each_runs_point(runs, tmp_path):
    from cptlab.compare.plots import merge_curves, plot_tradeoff
    from cptlab.compare.runs import load_runs, resolve_roles
    from cptlab.compare.table import build_rows

    for kind in ("extended", "lora"):
        merge_run(runs[kind], [0.0, 1.0])
    merge_run(runs["lora"], [0.0, 1.0], weights="ema")
    loaded = load_runs([runs["extended"], runs["lora"]])  # the lora run's EMA weights are a row of their own
    roles = resolve_roles(loaded)
    rows = build_rows(loaded, roles)
    scored = [i for i, r in enumerate(rows) if r["pareto_front"] is not None]
    curves = merge_curves(rows, scored)
    assert sorted(curves) == scored and len(scored) == 3
    for i, curve in curves.items():
        assert abs(curve[-1][1] - rows[i]["learning"]) <= 1e-6  # alpha=1 ends at the row's own point
        # alpha=0: the run's start, nothing learnt or lost, drawn where the row's own start sits when the rows are
        # measured from a common step 0 (these runs start from different bpb: cptlab.compare.table.common_starts)
        run = rows[i]["runs"][0]
        shift = (rows[i]["forgetting"] - run["forgetting_own"], rows[i]["learning"] - run["learning_own"])
        assert rows[i]["starts"] or shift == (0.0, 0.0)
        assert abs(curve[0][0] - shift[0]) <= 1e-6 and abs(curve[0][1] - shift[1]) <= 1e-6
    plot_tradeoff(rows, roles, tmp_path / "tradeoff.png")
    assert (tmp_path / "tradeoff.png").stat().st_size > 10_000

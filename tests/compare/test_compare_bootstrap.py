"""The bootstrap over evaluation blocks (cptlab.compare.blocks): its width on known cases, pairing, the
eval.max_blocks advice, and the `± eval` columns of the table (empty for runs that did not record blocks)."""

from __future__ import annotations

import csv
import io
import json
import math
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from rich.console import Console

from cptlab.cli.compare import compare
from cptlab.compare.blocks import (
    N_BOOT,
    Blocks,
    Resampler,
    Z,
    advice,
    blocks_needed,
    difference,
    half_width,
    row_replicates,
    run_blocks,
)
from cptlab.compare.runs import load_runs, resolve_roles
from cptlab.compare.table import CSV_FIELDS, build_rows
from cptlab.errors import CptlabError


def fake_run(nll_bits, nbytes, sha="blocks", domain="en", view="raw", available=None):
    """A completed run's summary as far as the bootstrap reads it."""
    summary = {"eval_block_sums": {domain: {"nll_bits": list(map(float, nll_bits)),
                                            "bytes": [int(b) for b in nbytes], "available": available}},
               "domains": {domain: {"eval_blocks_sha256": sha}}}
    return SimpleNamespace(summary=summary, view=view)


def test_identical_blocks_have_no_evaluation_noise():
    run = fake_run([1500.0] * 50, [1000] * 50)
    assert half_width(row_replicates(Resampler(), [run], ["en"])) == 0.0


def test_width_of_a_known_variance():
    """Equal-sized blocks: bpb is the mean of the blocks' bpb, whose bootstrap sd is sd / sqrt(n)."""
    rng = np.random.default_rng(1)
    n = 400
    per_block = 1.5 + rng.normal(0, 0.05, n)
    run = fake_run(per_block * 1000, [1000] * n)
    expected = Z * per_block.std() / math.sqrt(n)  # the plug-in sd: what resampling the blocks sees
    assert half_width(row_replicates(Resampler(), [run], ["en"])) == pytest.approx(expected, rel=0.05)
    assert expected == pytest.approx(1.96 * 0.05 / 20, rel=0.1)


def test_reproducible_and_the_seed_mean_is_resampled_together():
    rng = np.random.default_rng(2)
    base = 1.5 + rng.normal(0, 0.1, 30)
    seeds = [fake_run((base + rng.normal(0, 0.001, 30)) * 900, [900] * 30) for _ in range(3)]
    a = row_replicates(Resampler(), seeds, ["en"])
    assert np.array_equal(a, row_replicates(Resampler(), seeds, ["en"]))  # a fixed generator
    assert len(a) == N_BOOT
    # The seeds scored the same blocks: one draw of blocks for all of them, so the seed mean's noise is the
    # blocks' (not shrunk by averaging over seeds as independent draws would).
    one = half_width(row_replicates(Resampler(), seeds[:1], ["en"]))
    assert half_width(a) == pytest.approx(one, rel=0.05)


def test_paired_blocks_are_narrower_than_unpaired_on_correlated_blocks():
    """Two rows scored on the same (heterogeneous) blocks: the blocks' difficulty cancels in their difference."""
    rng = np.random.default_rng(3)
    n = 64
    difficulty = 1.5 + rng.normal(0, 0.2, n)  # blocks differ a lot; both rows see the same ones
    nbytes = rng.integers(800, 1200, n)
    a = fake_run((difficulty + rng.normal(0, 0.005, n)) * nbytes, nbytes)
    b = fake_run((difficulty - 0.02 + rng.normal(0, 0.005, n)) * nbytes, nbytes)
    b_elsewhere = fake_run((difficulty - 0.02 + rng.normal(0, 0.005, n)) * nbytes, nbytes, sha="other")
    paired, method = difference(Resampler(), [a], [b], ["en"])
    unpaired, method_u = difference(Resampler(), [a], [b_elsewhere], ["en"])
    assert (method, method_u) == ("paired blocks", "unpaired blocks")
    assert paired < unpaired / 5
    row = half_width(row_replicates(Resampler(), [a], ["en"]))
    assert unpaired == pytest.approx(math.sqrt(2) * row, rel=0.15)  # two independent draws
    assert difference(Resampler(), [a], [SimpleNamespace(summary={}, view="raw")], ["en"]) == (None, None)


def test_runs_without_usable_blocks_give_none():
    assert run_blocks(SimpleNamespace(summary={}, view="raw"), "en") is None
    assert run_blocks(fake_run([1.0], [1], view="ema"), "en") is None  # the record is the raw weights'
    assert run_blocks(fake_run([1.0, 2.0], [1]), "en") is None  # lengths differ
    assert run_blocks(fake_run([1.0], [0]), "en") is None  # no bytes
    assert run_blocks(fake_run([1.0], [1]), "zh") is None
    b = run_blocks(fake_run([3.0, 5.0], [2, 2], available=9), "en")
    assert isinstance(b, Blocks) and b.bpb() == 2.0 and b.n == 2 and b.available == 9
    assert row_replicates(Resampler(), [fake_run([3.0], [2]), SimpleNamespace(summary={}, view="raw")],
                          ["en"]) is None  # one seed without blocks: no interval for the row


def test_blocks_needed():
    assert blocks_needed(32, 0.02, 0.01) == 128  # half the noise: four times the blocks
    assert blocks_needed(32, 0.005, 0.01) == 8
    assert blocks_needed(100, 0.01, 0.01) == 100
    assert blocks_needed(32, 0.0, 0.01) == 1
    with pytest.raises(CptlabError):
        blocks_needed(32, 0.01, 0.0)
    with pytest.raises(CptlabError):
        blocks_needed(0, 0.01, 0.01)


def test_advice_lines():
    enough = advice("en", 32, 0.003, 0.08, 0.01, 500)
    assert enough.startswith("en: evaluation noise ± 0.0030 bpb at 32 blocks")
    assert "below 0.25 of the seed interval (± 0.0800) from ~1 blocks" in enough  # 32 * (0.003 / 0.02)^2
    assert "below the --margin (0.01) from ~3 blocks" in enough and enough.endswith("eval.max_blocks=32 is enough")
    more = advice("zh", 16, 0.02, None, 0.01, 40)  # one seed: the margin only
    assert "seed interval" not in more and "raise eval.max_blocks to ~64" in more
    assert "held-out split gives 40 blocks" in more and "data.domains.zh.heldout" in more
    # identical runs' seed interval (float rounding) is no target
    assert "seed interval" not in advice("en", 32, 0.003, 1e-16, 0.01, None)
    assert advice("en", 8, 0.001, None, 0.01, None, "on a row's bpb").startswith(
        "en: evaluation noise ± 0.0010 bpb on a row's bpb at 8 blocks")


def add_blocks(run_dir: Path, n: int = 24, sha: str | None = None) -> None:
    """Per-block sums consistent with the run's bpb at the end: blocks of shared difficulty (the same blocks in
    every run, the difficulty seeded by domain) plus a little per-run noise, scaled to the bpb exactly."""
    path = run_dir / "summary.json"
    summary = json.loads(path.read_text())
    record = {}
    for domain, d in summary["domains"].items():
        shared = np.random.default_rng(len(domain))
        difficulty = 1.0 + shared.normal(0, 0.1, n)
        nbytes = shared.integers(900, 1100, n)
        own = difficulty + np.random.default_rng(zlib.crc32(run_dir.name.encode())).normal(0, 0.002, n)
        bits = own * nbytes
        bits *= d["bpb_end"] * nbytes.sum() / bits.sum()
        record[domain] = {"nll_bits": bits.tolist(), "bytes": nbytes.tolist(), "available": 100}
        if sha:
            d["eval_blocks_sha256"] = sha
    summary["eval_block_sums"] = record
    path.write_text(json.dumps(summary))


def test_table_has_eval_columns_and_empty_cells_without_block_data(seeded_sweep, tmp_path):
    for run_dir in seeded_sweep.iterdir():
        if "replay_ratio=0," in run_dir.name or "replay_ratio=0.25," in run_dir.name:
            add_blocks(run_dir)  # ratios 0 and 0.25 recorded their blocks; 0.5 and 0.75 are older runs
    runs = load_runs([seeded_sweep])
    roles = resolve_roles(runs)
    rows = {r["label"]: r for r in build_rows(runs, roles)}
    with_blocks, ref = rows["data.replay_ratio=0.25"], rows["data.replay_ratio=0"]
    for row in (with_blocks, ref):
        assert 0 < row["new_bpb_eval_ci"] < 0.1 and 0 < row["old_bpb_eval_ci"] < 0.1
    assert with_blocks["forgetting_vs_ref_eval_method"] == "paired blocks"
    # the shared difficulty cancels: the difference is far less noisy than either row
    assert with_blocks["forgetting_vs_ref_eval_ci"] < with_blocks["old_bpb_eval_ci"] / 5
    old = rows["data.replay_ratio=0.5"]
    assert old["new_bpb_eval_ci"] is None and old["forgetting_vs_ref_eval_ci"] is None
    assert ref["learning_vs_ref_eval_ci"] is None  # the reference itself

    out = tmp_path / "cmp"
    console = Console(file=io.StringIO(), width=300)
    compare([seeded_sweep], out=out, console=console)
    with open(out / "summary.csv", newline="") as f:
        table = {r["label"]: r for r in csv.DictReader(f)}
    assert list(table["data.replay_ratio=0"]) == CSV_FIELDS
    assert float(table["data.replay_ratio=0.25"]["new_bpb_eval_ci95"]) == with_blocks["new_bpb_eval_ci"]
    assert table["data.replay_ratio=0.25"]["forgetting_vs_ref_eval_method"] == "paired blocks"
    assert table["data.replay_ratio=0.5"]["new_bpb_eval_ci95"] == ""  # an empty cell, not an error
    md = (out / "summary.md").read_text()
    head = next(line for line in md.splitlines() if line.startswith("| run |"))
    cells = head.split(" | ")
    col = cells.index("± eval (new bpb)")
    assert cells[col - 1].startswith("new bpb")
    line_of = {line.split(" | ")[0][2:]: line.split(" | ") for line in md.splitlines() if line.startswith("| data.")}
    assert line_of["data.replay_ratio=0.25"][col] == f"± {with_blocks['new_bpb_eval_ci']:.4f}"
    assert line_of["data.replay_ratio=0.5"][col] == ""
    assert "## Evaluation noise (eval.max_blocks)" in md
    assert "- zh: evaluation noise ± " in md and "- en: evaluation noise ± " in md
    # the advice is about the table's comparisons: the paired difference from the reference, far below a row's noise
    assert f"on the differences from the reference row (paired blocks; ± {with_blocks['old_bpb_eval_ci']:.4f} on a " \
           "row's bpb) at 24 blocks" in md
    printed = console.file.getvalue()
    assert "± eval" in printed and "en: evaluation noise ± " in printed


def test_unpaired_when_rows_scored_other_blocks(seeded_sweep):
    for run_dir in seeded_sweep.iterdir():
        if "replay_ratio=0," in run_dir.name:
            add_blocks(run_dir)
        elif "replay_ratio=0.25," in run_dir.name:
            add_blocks(run_dir, sha="other-blocks")  # e.g. another data.seq_len
    runs = load_runs([seeded_sweep])
    rows = {r["label"]: r for r in build_rows(runs, resolve_roles(runs))}
    row = rows["data.replay_ratio=0.25"]
    assert row["forgetting_vs_ref_eval_method"] == "unpaired blocks"
    assert row["forgetting_vs_ref_eval_ci"] > row["old_bpb_eval_ci"]

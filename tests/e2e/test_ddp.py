"""Two CPU processes (gloo, ddp_spawn) through the real CLI give the loss curve of one process with
the same global batch: each rank takes its rows of every global batch and gradients are averaged.
Matching curves alone would also hold if every rank read the whole global batch, so the rows each rank
trains on are checked too: in the loader itself, and recorded from inside the spawned ranks of a real run."""

import csv
import os
import subprocess
import sys
import textwrap
from itertools import islice
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from cptlab.data.datamodule import CPTDataModule
from cptlab.data.mixture import MixtureSampler
from cptlab.data.tokens import DomainTokens

ROOT = Path(__file__).resolve().parents[2]
ARGS = ["experiment=demo_zh", "debug=smoke", "trainer.max_steps=6", "eval.every_n_steps=3",
        "trainer.log_every_n_steps=1", "optim.grad_clip=null"]

# Loaded by every Python process the CLI starts (ddp_spawn's ranks included) through PYTHONPATH: records
# the input_ids of each micro-batch the training loader yields, per rank and step.
RECORD_ROWS = textwrap.dedent("""
    import os
    if os.environ.get("CPTLAB_TEST_ROWS_DIR"):
        import torch
        from cptlab.data import datamodule

        def _recording(iter_batches):
            def __iter__(self):
                out = os.environ["CPTLAB_TEST_ROWS_DIR"]
                for batch in iter_batches(self):
                    name = f"ws{self.world_size}_rank{self.rank}_step{int(batch['step'])}.pt"
                    torch.save(batch["input_ids"].clone(), os.path.join(out, name))
                    yield batch
            return __iter__

        datamodule.StepStream.__iter__ = _recording(datamodule.StepStream.__iter__)
""")


def recorded_rows(rows_dir: Path, world_size: int) -> dict[tuple[int, int], torch.Tensor]:
    """{(rank, step): input_ids} recorded by RECORD_ROWS for runs of `world_size` ranks."""
    out = {}
    for path in rows_dir.glob(f"ws{world_size}_rank*_step*.pt"):
        rank, step = path.stem.split("_")[1:]
        out[(int(rank[4:]), int(step[4:]))] = torch.load(path)
    return out


def run(run_dir, *extra, rows_dir=None):
    env = dict(os.environ)
    if rows_dir is not None:
        (rows_dir / "hook").mkdir(parents=True, exist_ok=True)
        (rows_dir / "hook" / "sitecustomize.py").write_text(RECORD_ROWS)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(rows_dir / "hook"), env.get("PYTHONPATH")]))
        env["CPTLAB_TEST_ROWS_DIR"] = str(rows_dir)
    proc = subprocess.run([sys.executable, "-m", "cptlab.cli.train_app", *ARGS, *extra, f"hydra.run.dir={run_dir}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return {(int(r["step"]), k): float(v) for r in rows for k, v in r.items()
            if v and k != "step" and k != "train/tokens_per_sec" and r.get(k)}


def test_cpu_ddp_matches_single_process(tmp_path):
    rows_dir = tmp_path / "rows"
    # 5 eval blocks: rank 0 scores 3, rank 1 2 (padded to gather the per-block sums)
    single = run(tmp_path / "single", "eval.max_blocks=5", rows_dir=rows_dir)
    ddp = run(tmp_path / "ddp", "eval.max_blocks=5", "trainer=ddp", "trainer.accelerator=cpu",
              "trainer.strategy=ddp_spawn", "trainer.devices=2", "trainer.precision=32-true", "trainer.max_steps=6",
              rows_dir=rows_dir)
    assert set(single) == set(ddp)
    for key, value in single.items():
        assert ddp[key] == pytest.approx(value, rel=1e-4, abs=1e-5), key
    # summary.json's per-block sums hold every rank's blocks, in block order
    import json

    blocks = [json.loads((tmp_path / d / "summary.json").read_text())["eval_block_sums"] for d in ("single", "ddp")]
    assert set(blocks[0]) == set(blocks[1]) == {"zh", "en", "en_eval"}
    for domain, record in blocks[0].items():
        assert record["bytes"] == blocks[1][domain]["bytes"] and len(record["bytes"]) == 5
        assert blocks[1][domain]["nll_bits"] == pytest.approx(record["nll_bits"], rel=1e-4)
    assert (tmp_path / "ddp" / "summary.json").exists()
    # Each spawned rank trained on its half of every global batch the single process trained on.
    whole, ranks = recorded_rows(rows_dir, 1), recorded_rows(rows_dir, 2)
    steps = range(6)
    assert all((0, s) in whole and (0, s) in ranks and (1, s) in ranks for s in steps), sorted(ranks)
    for s in steps:
        assert whole[(0, s)].shape[0] == 8  # debug=smoke: data.batch_size=8
        assert torch.equal(ranks[(0, s)], whole[(0, s)][0::2]), s
        assert torch.equal(ranks[(1, s)], whole[(0, s)][1::2]), s


def token_domain(tmp_path, name, role, offset, n_train=2000):
    """A token cache whose train array is `offset + arange(n_train)`: every value names its domain and position."""
    directory = tmp_path / name
    directory.mkdir()
    (offset + np.arange(n_train, dtype=np.int64)).astype(np.uint32).tofile(directory / "train.bin")
    (offset + np.arange(200, dtype=np.int64)).astype(np.uint32).tofile(directory / "val.bin")
    return DomainTokens(name=name, role=role, weight=1.0, dir=directory, dtype="uint32", n_train_tokens=n_train,
                        n_val_tokens=200, n_train_docs=1, n_val_docs=1, val_bytes=200, eos_id=0)


def loader_batches(sampler, rank, world_size, start, n):
    """The first n micro-batches the training DataLoader gives rank `rank` of `world_size`, resuming at `start`."""
    datamodule = CPTDataModule(sampler)
    datamodule.trainer = SimpleNamespace(global_rank=rank, world_size=world_size,
                                         lightning_module=SimpleNamespace(batches_done=start))
    return list(islice(iter(datamodule.train_dataloader()), n))


def test_each_rank_loads_its_half_of_every_global_batch(tmp_path):
    domains = [token_domain(tmp_path, "new", "new", 1_000_000), token_domain(tmp_path, "old", "replay", 2_000_000)]
    sampler = MixtureSampler(domains, 0.25, batch_size=8, seq_len=16, seed=3)
    whole = loader_batches(sampler, 0, 1, start=5, n=4)
    parts = [loader_batches(sampler, rank, 2, start=5, n=4) for rank in range(2)]
    for i, batch in enumerate(whole):
        assert batch["step"] == 5 + i and batch["input_ids"].shape == (8, 16)
        for rank, part in enumerate(parts):
            mine = part[i]
            assert mine["step"] == batch["step"] and mine["input_ids"].shape == (4, 16)
            for key in ("input_ids", "targets", "domain", "is_replay"):
                assert torch.equal(mine[key], batch[key][rank::2]), (i, rank, key)
            # the counters stay global (replay share over all ranks' rows): 8 rows, 2 of them replay
            assert (mine["rows"], mine["replay_rows"]) == (batch["rows"], batch["replay_rows"]) == (8, 2)
        # the two halves are disjoint and together the global batch
        both = torch.cat([parts[0][i]["input_ids"], parts[1][i]["input_ids"]])
        assert sorted(map(tuple, both.tolist())) == sorted(map(tuple, batch["input_ids"].tolist()))

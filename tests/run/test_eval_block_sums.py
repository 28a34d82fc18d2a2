"""The final evaluation's per-block sums (summary.json `eval_block_sums`): from the same forward passes as the
totals, adding up to them, in block order when ranks split the blocks, and bpb recomputed from the record
equals the logged bpb."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from cptlab.evaluation.bpb import eval_sums, metrics_from_sums
from cptlab.rundir.summary import block_sums_record
from cptlab.training.callbacks import PeriodicEval, all_blocks, interleave_ranks


class FixedLM(torch.nn.Module):
    """The same distribution at every position (p = softmax(logits) over a 4-token vocabulary)."""

    def __init__(self, probs):
        super().__init__()
        self.logits = torch.log(torch.tensor(probs))

    def forward(self, input_ids):
        return SimpleNamespace(logits=self.logits.expand(*input_ids.shape, -1))


MODEL = FixedLM([0.5, 0.25, 0.125, 0.125])  # bits: 1, 2, 3, 3
TOKEN_BYTES = torch.tensor([1, 2, 3, 0])


def test_per_block_sums_are_the_blocks_and_add_up_to_the_totals():
    blocks = torch.tensor([[3, 0, 1, 2], [0, 0, 1, 3], [1, 2, 2, 2]])  # targets [0,1,2], [0,1,3], [2,2,2]
    sums, per_block = eval_sums(MODEL, blocks, TOKEN_BYTES, batch_size=2, per_block=True)
    assert per_block.shape == (3, 3) and per_block.dtype == torch.float64
    bits = torch.tensor([1 + 2 + 3, 1 + 2 + 3, 3 + 3 + 3], dtype=torch.float64)
    torch.testing.assert_close(per_block[:, 0], bits * math.log(2))
    assert per_block[:, 1].tolist() == [3, 3, 3] and per_block[:, 2].tolist() == [6, 3, 9]
    torch.testing.assert_close(per_block.sum(0), sums)
    torch.testing.assert_close(sums, eval_sums(MODEL, blocks, TOKEN_BYTES, batch_size=1))  # totals unchanged
    _, none = eval_sums(MODEL, blocks[:0], TOKEN_BYTES, batch_size=2, per_block=True)
    assert none.shape == (0, 3)


def test_ranks_blocks_are_put_back_in_block_order():
    """5 blocks on 2 ranks: rank 0 scores blocks 0, 2, 4 and rank 1 blocks 1, 3 (padded to 3 rows to gather)."""
    torch.manual_seed(0)
    blocks = torch.randint(0, 4, (5, 6))
    _, single = eval_sums(MODEL, blocks, TOKEN_BYTES, batch_size=2, per_block=True)
    mine = [eval_sums(MODEL, blocks[r::2], TOKEN_BYTES, batch_size=2, per_block=True)[1] for r in range(2)]
    padded0 = mine[0]  # rank 0 has the most blocks: no padding
    gathered = []

    def all_gather(t):
        gathered.append(t.shape)
        return torch.stack([padded0, t])

    trainer = SimpleNamespace(world_size=2, strategy=SimpleNamespace(all_gather=all_gather))
    torch.testing.assert_close(all_blocks(trainer, mine[1], len(blocks)), single)
    assert gathered == [(3, 3)]  # rank 1's two rows padded to rank 0's three
    assert torch.equal(all_blocks(SimpleNamespace(world_size=1), single, 5), single)
    # the interleaving alone: block j is rank j % world's row j // world
    g = torch.arange(2 * 3).view(2, 3, 1)  # rank r row k holds 3r + k
    assert interleave_ranks(g, 5).flatten().tolist() == [0, 3, 1, 4, 2]


def evaluate(blocks: dict[str, torch.Tensor]) -> PeriodicEval:
    trainer = SimpleNamespace(global_rank=0, world_size=1, strategy=SimpleNamespace(reduce=lambda t, reduce_op: t))
    module = SimpleNamespace(model=MODEL, device="cpu")
    ev = PeriodicEval(blocks, TOKEN_BYTES, every_n_steps=1, batch_size=2, tokens_per_batch=1)
    ev.latest = ev._evaluate(trainer, module, "val")
    ev._evaluate(trainer, module, "val_ema")  # the EMA weights' evaluation keeps no blocks
    return ev


def test_the_record_gives_back_the_logged_bpb():
    torch.manual_seed(1)
    blocks = {"zh": torch.randint(0, 4, (7, 33)), "en": torch.randint(0, 3, (4, 17))}
    ev = evaluate(blocks)
    assert set(ev.latest_blocks) == {"zh", "en"}
    for name, b in blocks.items():
        record = block_sums_record(ev.latest_blocks[name], available=10)
        assert len(record["nll_bits"]) == len(record["bytes"]) == len(b) and record["available"] == 10
        assert all(isinstance(x, int) for x in record["bytes"])
        bpb = sum(record["nll_bits"]) / sum(record["bytes"])
        assert bpb == pytest.approx(ev.latest[f"val/{name}/bpb"], rel=1e-8)
        assert ev.latest[f"val/{name}/bpb"] == pytest.approx(metrics_from_sums(
            eval_sums(MODEL, b, TOKEN_BYTES, batch_size=3))["bpb"], rel=1e-12)
    # kept with the callback's state (a resumed run that ends without another evaluation still records them)
    restored = PeriodicEval(blocks, TOKEN_BYTES, every_n_steps=1, batch_size=2, tokens_per_batch=1)
    restored.load_state_dict(ev.state_dict())
    assert torch.equal(restored.latest_blocks["zh"], ev.latest_blocks["zh"])
    restored.load_state_dict({k: v for k, v in ev.state_dict().items() if k != "latest_blocks"})  # older checkpoint
    assert restored.latest_blocks == {}

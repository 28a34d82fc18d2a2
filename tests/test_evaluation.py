import math

import pytest
import torch

from cptlab.evaluation.bpb import eval_sums, metrics_from_sums


class FixedLM(torch.nn.Module):
    """Predicts the same distribution everywhere: p = softmax(logits) over a 4-token vocabulary."""

    def __init__(self, probs):
        super().__init__()
        self.logits = torch.log(torch.tensor(probs))

    def forward(self, input_ids):
        out = self.logits.expand(*input_ids.shape, -1)
        return type("Out", (), {"logits": out})()


def test_bpb_matches_a_hand_computed_case():
    # Vocabulary of 4 tokens standing for 1, 2, 3 and 0 bytes; p = (1/2, 1/4, 1/8, 1/8).
    model = FixedLM([0.5, 0.25, 0.125, 0.125])
    token_bytes = torch.tensor([1, 2, 3, 0])
    blocks = torch.tensor([[3, 0, 1, 2], [0, 0, 1, 3]])  # targets: [0,1,2], [0,1,3]
    sums = eval_sums(model, blocks, token_bytes, batch_size=1)
    # bits: target 0 -> 1, 1 -> 2, 2 -> 3, 3 -> 3; bytes: 1, 2, 3, 0
    bits = (1 + 2 + 3) + (1 + 2 + 3)
    n_bytes = (1 + 2 + 3) + (1 + 2 + 0)
    m = metrics_from_sums(sums)
    assert sums[1] == 6
    assert m["bpb"] == pytest.approx(bits / n_bytes)
    assert m["loss"] == pytest.approx(bits * math.log(2) / 6)
    assert m["ppl"] == pytest.approx(math.exp(m["loss"]))


def test_batch_size_does_not_change_the_result():
    torch.manual_seed(0)
    model = FixedLM([0.1, 0.2, 0.3, 0.4])
    blocks = torch.randint(0, 4, (7, 9))
    tb = torch.tensor([1, 1, 2, 4])
    a = eval_sums(model, blocks, tb, batch_size=1)
    b = eval_sums(model, blocks, tb, batch_size=5)
    assert torch.allclose(a, b)


def test_unigram_bpb_hand_computed():
    import numpy as np

    from cptlab.evaluation.bpb import unigram_bpb

    counts = np.array([3, 2, 1])  # train tokens 0,0,0,1,1,2; +1 smoothing over 4 ids: counts 4,3,2,1 of 10
    blocks = torch.tensor([[9, 0, 1], [9, 3, 3]]) % 4  # targets: 0, 1, 3, 3
    tb = torch.tensor([1, 2, 1, 1])
    bits = -(math.log2(0.4) + math.log2(0.3) + 2 * math.log2(0.1))
    assert unigram_bpb(counts, blocks, tb) == pytest.approx(bits / (1 + 2 + 1 + 1))
    # counts longer than the vocabulary (ids the tokenizer cannot produce) are cut to it
    assert unigram_bpb(np.array([3, 2, 1, 0, 7]), blocks, tb) == pytest.approx(bits / (1 + 2 + 1 + 1))


def test_eval_sums_pads_forward_passes_without_counting_them():
    # Under FSDP every rank makes as many forward passes as the rank with the most blocks, even one with none.
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from cptlab.evaluation.bpb import eval_sums

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2))
    calls = []
    model.register_forward_hook(lambda *args: calls.append(1))
    blocks, token_bytes = torch.randint(0, 32, (3, 9)), torch.ones(32, dtype=torch.long)
    plain = eval_sums(model, blocks, token_bytes, batch_size=2)
    assert len(calls) == 2
    padded = eval_sums(model, blocks, token_bytes, batch_size=2, n_batches=4, filler=blocks[:1])
    assert len(calls) == 2 + 4 and torch.equal(plain, padded)
    empty = eval_sums(model, blocks[:0], token_bytes, batch_size=2, n_batches=2, filler=blocks[:1])
    assert len(calls) == 2 + 4 + 2 and empty.tolist() == [0.0, 0.0, 0.0]

"""model.compile=true compiles the model in place: same parameter names and state-dict keys (checkpoints
and exports unchanged), and (slow: inductor builds C++ kernels) the same loss and gradients as eager."""

import pytest
import torch

from cptlab.run import pipeline
from cptlab.run.plan_values import parts_of


def wordlevel_tokenizer():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({f"w{i}": i for i in range(40)},
                                                                               unk_token="w0")),
                                   eos_token="w1", bos_token="w2", unk_token="w0")


def build(compose_cfg, tmp_path, *overrides):
    cfg = compose_cfg(["debug=smoke", *overrides], output_dir=tmp_path)
    model, _ = pipeline.build_model(parts_of(cfg), wordlevel_tokenizer(), adapter=cfg.adapter)
    return model


@pytest.mark.parametrize("adapter", ["none", "lora"])
def test_compile_is_in_place_and_keeps_names(compose_cfg, tmp_path, adapter):
    eager = build(compose_cfg, tmp_path, f"adapter={adapter}")
    compiled = build(compose_cfg, tmp_path, f"adapter={adapter}", "model.compile=true")
    assert eager._compiled_call_impl is None and compiled._compiled_call_impl is not None
    assert list(compiled.state_dict()) == list(eager.state_dict())
    assert [n for n, _ in compiled.named_parameters()] == [n for n, _ in eager.named_parameters()]


def loss_and_grads(model):
    model.train()
    ids = torch.arange(2 * 17).view(2, 17) % 40
    logits = model(input_ids=ids[:, :-1]).logits
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]


@pytest.mark.slow
def test_compiled_model_gives_the_eager_loss_and_gradients(compose_cfg, tmp_path):
    l0, g0 = loss_and_grads(build(compose_cfg, tmp_path))
    l1, g1 = loss_and_grads(build(compose_cfg, tmp_path, "model.compile=true"))
    assert torch.allclose(l0, l1, rtol=1e-5)
    assert len(g0) == len(g1) and all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(g0, g1))

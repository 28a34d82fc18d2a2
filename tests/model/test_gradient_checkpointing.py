"""model.gradient_checkpointing=true trades compute for memory without changing the numbers."""

import torch

from cptlab.run import pipeline
from cptlab.run.plan_values import parts_of


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(compose_cfg, tmp_path):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({f"w{i}": i for i in range(40)},
                                                                              unk_token="w0")),
                                  eos_token="w1", bos_token="w2", unk_token="w0")
    results = []
    for flag in (False, True):
        cfg = compose_cfg(["debug=smoke", f"model.gradient_checkpointing={str(flag).lower()}"], output_dir=tmp_path)
        model, _ = pipeline.build_model(parts_of(cfg), tok)
        assert model.is_activation_checkpointing == flag
        model.train()
        ids = torch.arange(2 * 17).view(2, 17) % 40
        loss = torch.nn.functional.cross_entropy(model(input_ids=ids[:, :-1]).logits.flatten(0, 1), ids[:, 1:].flatten())
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    (l0, g0), (l1, g1) = results
    assert torch.equal(l0, l1)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(g0, g1))

"""cptlab.training.fsdp: which modules are sharded (the decoder layers) and which stay whole (everything outside
them), with and without peft, and the strategy built from the config. Training under FSDP is tested end
to end in tests/e2e/test_fsdp.py."""

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaDecoderLayer

from cptlab.config import FSDP_SHARDING, AdapterConfig
from cptlab.errors import CptlabError
from cptlab.model.adapter import apply_adapter
from cptlab.training.fsdp import average_gradients, fsdp_strategy, layer_classes, replicated_params

CONF = Path(__file__).resolve().parents[1] / "conf"


def tiny(tie: bool = False) -> LlamaForCausalLM:
    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tie))


def lora(model):
    # adapter=lora over the schema, as a composed run sees it (the option file states only what differs)
    cfg = OmegaConf.merge(OmegaConf.structured(AdapterConfig), OmegaConf.load(CONF / "adapter" / "lora.yaml"))
    return apply_adapter(model, cfg, base_rows=64)


@pytest.mark.parametrize("wrap", [lambda m: m, lora], ids=["plain", "lora"])
def test_layers_are_sharded_and_the_rest_is_replicated(wrap):
    model = wrap(tiny())
    assert layer_classes(model) == {LlamaDecoderLayer}
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    expected = [inner.model.embed_tokens.weight, inner.model.norm.weight, inner.lm_head.weight]
    assert [id(p) for p in replicated_params(model)] == [id(p) for p in expected]
    inside = {id(p) for layer in inner.model.layers for p in layer.parameters()}
    every = {id(p) for p in model.parameters()}
    assert every == inside | {id(p) for p in expected}  # nothing falls between


def test_tied_embeddings_are_listed_once():
    params = replicated_params(tiny(tie=True))
    assert len(params) == len({id(p) for p in params}) == 2  # embed/lm_head (one matrix) and the final norm


@pytest.mark.parametrize("sharding", FSDP_SHARDING)
def test_strategy_from_config(sharding):
    from torch.distributed.fsdp import ShardingStrategy

    strategy = fsdp_strategy(tiny(), sharding=sharding)
    assert strategy.sharding_strategy == ShardingStrategy[sharding]
    assert strategy.kwargs["use_orig_params"] is True
    assert strategy.kwargs["auto_wrap_policy"]._module_classes == {LlamaDecoderLayer}
    assert len(strategy.kwargs["ignored_modules"]) == 3


def test_a_sharding_torch_does_not_name_is_refused():
    """trainer.fsdp_sharding's message is the rule's (tests/reliability/test_validation.py); the strategy takes a
    torch ShardingStrategy name as spelled, never a near one."""
    for sharding in ("HYBRID", "full_shard"):
        with pytest.raises(ValueError, match=f"{sharding!r} is not the name of a torch FSDP ShardingStrategy"):
            fsdp_strategy(tiny(), sharding=sharding)


def test_a_model_without_decoder_layer_classes_is_refused():
    class Plain(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(2, 2)

    with pytest.raises(CptlabError, match="_no_split_modules"):
        fsdp_strategy(Plain())


def test_average_gradients_is_a_no_op_in_one_process():
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.full((3,), 2.0)
    average_gradients([p], world_size=1)
    assert torch.equal(p.grad, torch.full((3,), 2.0))


class _Payload:
    def __init__(self, sentinel: Path):
        self.sentinel = sentinel

    def __reduce__(self):
        return Path.touch, (self.sentinel,)


def test_a_checkpoint_with_a_payload_is_refused_before_lightning_unpickles_it(tmp_path, monkeypatch):
    """Lightning's FSDP restore reads a full checkpoint with its own (unrestricted) unpickler: cptlab reads it
    weights-only first, and Lightning never unpickles the file."""
    import pytorch_lightning.strategies.fsdp as lightning_fsdp

    from cptlab.training.checkpoint import UnsafeCheckpoint

    def never(path):
        raise AssertionError("Lightning unpickled the file itself")

    monkeypatch.setattr(lightning_fsdp, "_lazy_load", never)
    sentinel, ckpt = tmp_path / "SENTINEL", tmp_path / "last.ckpt"
    torch.save({"global_step": 1, "state_dict": {"w": torch.ones(1)}, "x": _Payload(sentinel)}, ckpt)
    with pytest.raises(UnsafeCheckpoint, match=f"{ckpt} is refused"):
        fsdp_strategy(tiny()).load_checkpoint(ckpt, weights_only=False)
    assert not sentinel.exists()
    with pytest.raises(CptlabError, match="not a checkpoint file"):  # a sharded one: Lightning would unpickle it
        fsdp_strategy(tiny()).load_checkpoint(tmp_path)


def test_lightning_is_handed_the_weights_only_checkpoint():
    import pytorch_lightning.strategies.fsdp as lightning_fsdp

    from cptlab.training.fsdp import _lightning_reads

    original, checkpoint = lightning_fsdp._lazy_load, {"state_dict": {}}
    with _lightning_reads(checkpoint):
        assert lightning_fsdp._lazy_load("any/path.ckpt") is checkpoint
    assert lightning_fsdp._lazy_load is original

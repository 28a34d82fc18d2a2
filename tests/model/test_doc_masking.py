"""data.doc_masking: position ids restart at each EOS inside a block, and the model then masks every document off
from the others, so a packed block gives each document the logits (and losses) it gets when run alone as
`[EOS, doc...]`; without masking it does not. Training loss (plain and chunked), the mean teacher and the held-out
evaluation take that path; model types it was not verified for are refused in one line."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModelForCausalLM

from cptlab.errors import CptlabError
from cptlab.evaluation.bpb import eval_sums
from cptlab.model.doc_mask import DOC_MASKING_MODEL_TYPES, check_doc_masking, document_position_ids
from cptlab.model.load import load_model
from cptlab.model.loss import causal_lm_loss
from cptlab.training.module import CPTModule
from cptlab.training.retention.ema import EMA
from cptlab.training.retention.teacher import MeanTeacher
from cptlab.training.schedule import LRSchedule

EOS, VOCAB = 1, 48
DOCS = [[5, 6, 7, 8, 9], [10, 11, 12], [13, 14, 15, 16, 17, 18, 19]]
SIZES = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             max_position_embeddings=64)


def packed(docs=DOCS) -> torch.Tensor:
    """[1, n] ids of `docs` packed as cptlab's stream packs them: each after an EOS."""
    return torch.tensor([[t for doc in docs for t in (EOS, *doc)]])


def llama() -> torch.nn.Module:
    """A tiny random Llama built the way a run builds one from model.config (sdpa attention, no cache)."""
    torch.manual_seed(0)
    return load_model(None, config=SIZES, dtype="float32", vocab_size=VOCAB, eos_id=EOS).eval()


def tiny(model_type: str, attn: str) -> torch.nn.Module:
    config = AutoConfig.for_model(model_type, vocab_size=VOCAB, eos_token_id=EOS, bos_token_id=None, **SIZES)
    config._attn_implementation = attn
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


# -- (a) the position ids --------------------------------------------------------------------------------------


@pytest.mark.parametrize("ids, expected", [
    ([3, 4, 5, 6], [0, 1, 2, 3]),  # no EOS: one segment, plain positions
    ([EOS, 3, 4, EOS, 5], [0, 1, 2, 0, 1]),  # EOS at position 0 starts the block's first segment anyway
    ([3, 4, EOS, 5, 6], [0, 1, 0, 1, 2]),  # a block cut mid-document: its tail is a segment of its own
    ([3, EOS, EOS, 4], [0, 0, 0, 1]),  # consecutive EOS: an empty document is a segment of one EOS
    ([EOS, EOS, EOS], [0, 0, 0]),
])
def test_position_ids_restart_at_each_eos(ids, expected):
    assert document_position_ids(torch.tensor([ids]), EOS).tolist() == [expected]
    assert document_position_ids(torch.tensor(ids), EOS).tolist() == expected  # any leading shape


def test_position_ids_are_per_row_and_long():
    ids = torch.tensor([[EOS, 3, 4, 5], [3, EOS, 4, EOS]])
    pos = document_position_ids(ids, EOS)
    assert pos.dtype == torch.long and pos.tolist() == [[0, 1, 2, 3], [0, 0, 1, 0]]


# -- (b) a packed block gives each document its logits alone ------------------------------------------------------


def per_document_alone(model, docs=DOCS) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(input_ids=packed([doc]), use_cache=False).logits[0] for doc in docs])


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("model_type", DOC_MASKING_MODEL_TYPES)
def test_packed_block_with_masking_equals_documents_alone(model_type, attn):
    model = llama() if (model_type, attn) == ("llama", "sdpa") else tiny(model_type, attn)
    assert model.config.model_type == model_type
    ids = packed()
    alone = per_document_alone(model)
    with torch.no_grad():
        masked = model(input_ids=ids, position_ids=document_position_ids(ids, EOS), use_cache=False).logits[0]
        plain = model(input_ids=ids, use_cache=False).logits[0]
    torch.testing.assert_close(masked, alone, atol=1e-5, rtol=1e-5)
    # Without masking the later documents see the earlier ones: the test can tell the two apart.
    first = len(DOCS[0]) + 1
    torch.testing.assert_close(plain[:first], alone[:first], atol=1e-5, rtol=1e-5)
    assert (plain[first:] - alone[first:]).abs().max() > 1e-3


def test_a_cache_would_switch_the_packed_mask_off():
    """Why every masked forward passes use_cache=False: transformers builds the packed mask only without a cache."""
    model = tiny("llama", "sdpa")
    ids = packed()
    with torch.no_grad():
        cached = model(input_ids=ids, position_ids=document_position_ids(ids, EOS), use_cache=True).logits[0]
    assert (cached - per_document_alone(model)).abs().max() > 1e-3


def targets_of(ids: torch.Tensor) -> torch.Tensor:
    """Each position's next token, the last one predicting EOS (the separator after the last document)."""
    return torch.cat([ids[:, 1:], torch.full_like(ids[:, :1], EOS)], dim=1)


@pytest.mark.parametrize("chunked", [False, True])
def test_training_loss_is_the_documents_loss_alone(chunked):
    model = llama()
    ids = packed()
    position_ids = document_position_ids(ids, EOS)
    if chunked:
        loss = causal_lm_loss(model, ids, targets_of(ids), chunk=5, position_ids=position_ids)
    else:
        logits = model(input_ids=ids, position_ids=position_ids, use_cache=False).logits
        loss = F.cross_entropy(logits.float().flatten(0, 1), targets_of(ids).flatten())
    alone = [F.cross_entropy(model(input_ids=packed([d]), use_cache=False).logits[0].float(),
                             targets_of(packed([d]))[0], reduction="sum") for d in DOCS]
    torch.testing.assert_close(loss, torch.stack(alone).sum() / ids.shape[1], atol=1e-5, rtol=1e-5)


def module(model, **kwargs) -> CPTModule:
    return CPTModule(model, lr=1e-3, weight_decay=0.0, betas=[0.9, 0.95], eps=1e-8,
                     schedule=LRSchedule(total_steps=4, warmup_steps=0), **kwargs)


@pytest.mark.parametrize("chunked", [False, True])
def test_training_step_masks_documents(chunked):
    ids = packed()
    batch = {"input_ids": ids, "targets": targets_of(ids), "step": 0, "rows": 1, "replay_rows": 0}
    losses = {}
    for doc_eos in (None, EOS):
        model = llama().train()
        losses[doc_eos] = module(model, chunked_loss=chunked, doc_eos=doc_eos).training_step(dict(batch), 0).detach()
        position_ids = None if doc_eos is None else document_position_ids(ids, EOS)
        logits = model(input_ids=ids, position_ids=position_ids, use_cache=False).logits
        torch.testing.assert_close(losses[doc_eos], F.cross_entropy(logits.flatten(0, 1), batch["targets"].flatten()))
    assert abs(losses[None] - losses[EOS]) > 1e-4


def test_mean_teacher_scores_the_block_with_the_students_masking():
    """The teacher starts as the student's weights: a KL of 0 only if it sees the same segments and positions."""
    model = llama().train()
    ema = EMA(decay=0.9)
    ema.init_from(model)
    m = module(model, doc_eos=EOS)
    m.retention, m.retention_weight = MeanTeacher(ema, on="all"), 1.0
    ids = packed()
    batch = {"input_ids": ids, "targets": targets_of(ids), "step": 0, "rows": 1, "replay_rows": 0,
             "is_replay": torch.tensor([False])}
    m.training_step(batch, 0)
    assert float(m.retention_sum) == pytest.approx(0.0, abs=1e-6)
    unmasked = MeanTeacher(ema, on="all")(model, batch, model(input_ids=ids, position_ids=document_position_ids(
        ids, EOS), use_cache=False).logits)
    assert float(unmasked) > 1e-4  # the batch without position ids: the teacher saw the plain block


# -- (c) held-out evaluation ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunked", [False, True])
def test_eval_sums_of_a_block_are_the_sums_of_its_documents_alone(chunked):
    model = llama()
    block = torch.cat([packed(), torch.tensor([[EOS]])], dim=1)  # seq_len + 1 tokens: the last target is an EOS
    token_bytes = torch.arange(VOCAB) % 4
    masked = eval_sums(model, block, token_bytes, batch_size=1, chunked=chunked, doc_eos=EOS)
    alone = sum(eval_sums(model, torch.tensor([[EOS, *doc, EOS]]), token_bytes, batch_size=1, chunked=chunked)
                for doc in DOCS)
    torch.testing.assert_close(masked, alone, atol=1e-4, rtol=1e-6)
    plain = eval_sums(model, block, token_bytes, batch_size=1, chunked=chunked)
    assert plain[1:].tolist() == masked[1:].tolist() and abs(float(plain[0] - masked[0])) > 1e-3


def test_eval_sums_masking_is_per_block_in_a_batch():
    model = llama()
    blocks = torch.tensor([[EOS, 5, 6, EOS, 7, 8, 9, EOS], [4, 5, EOS, 6, EOS, EOS, 7, 8]])
    token_bytes = torch.ones(VOCAB, dtype=torch.long)
    together = eval_sums(model, blocks, token_bytes, batch_size=2, doc_eos=EOS)
    apart = sum(eval_sums(model, b[None], token_bytes, batch_size=1, doc_eos=EOS) for b in blocks)
    torch.testing.assert_close(together, apart, atol=1e-4, rtol=1e-6)


def test_periodic_eval_scores_with_the_modules_masking(spy):
    """The run's evaluation (PeriodicEval, raw and EMA weights alike) reads data.doc_masking from the module."""
    from types import SimpleNamespace

    from cptlab.training import callbacks

    calls = spy(callbacks, "eval_sums")
    block = torch.cat([packed(), torch.tensor([[EOS]])], dim=1)
    token_bytes = torch.ones(VOCAB, dtype=torch.long)
    trainer = SimpleNamespace(global_rank=0, world_size=1, strategy=SimpleNamespace(reduce=lambda x, reduce_op: x))
    evaluator = callbacks.PeriodicEval({"d": block}, token_bytes, every_n_steps=1, batch_size=1, tokens_per_batch=1)
    model = llama()
    metrics = evaluator._sums(trainer, module(model, doc_eos=EOS), block)
    assert calls[-1]["doc_eos"] == EOS
    expected = callbacks.metrics_from_sums(eval_sums(model, block, token_bytes, batch_size=1, doc_eos=EOS))
    assert metrics == pytest.approx(expected)
    evaluator._sums(trainer, module(model), block)
    assert calls[-1]["doc_eos"] is None


def test_merge_scores_like_the_runs_evaluation(monkeypatch):
    """cptlab-merge's alpha=1 is the run's final bpb: it masks documents exactly when the run did."""
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from cptlab.run import merge

    monkeypatch.setattr(merge, "_run_tokenizers", lambda run: (None, SimpleNamespace(eos_token_id=EOS), None))
    assert merge._doc_eos(SimpleNamespace(cfg=OmegaConf.create({"data": {"doc_masking": True}}))) == EOS
    assert merge._doc_eos(SimpleNamespace(cfg=OmegaConf.create({"data": {"doc_masking": False}}))) is None
    assert merge._doc_eos(SimpleNamespace(cfg=OmegaConf.create({"data": {}}))) is None  # a run from before the key


# -- (e) the allow-list ---------------------------------------------------------------------------------------------


def test_other_model_types_are_refused_in_one_line():
    for model_type in DOC_MASKING_MODEL_TYPES:
        check_doc_masking(model_type)
    for model_type in ("gpt2", None):
        with pytest.raises(CptlabError) as info:
            check_doc_masking(model_type)
        message = str(info.value)
        assert "data.doc_masking" in message and repr(model_type) in message and "\n" not in message


def save_config(path, model_type: str):
    config = AutoConfig.for_model(model_type, vocab_size=VOCAB)
    config.save_pretrained(path)
    return path


def test_validation_refuses_a_base_of_another_type_before_any_work(compose_cfg, tmp_path):
    from cptlab.run.validate import validate, validate_doc_masking

    gpt2 = save_config(tmp_path / "gpt2", "gpt2")
    overrides = ["experiment=demo_zh", "debug=smoke", f"model.name_or_path={gpt2}", "tokenizer.path=null"]
    validate_doc_masking(compose_cfg(overrides))  # off: nothing to check
    with pytest.raises(CptlabError) as info:
        validate(compose_cfg([*overrides, "data.doc_masking=true"]))
    assert "data.doc_masking=true is not supported for model type 'gpt2'" in str(info.value)
    llama_dir = save_config(tmp_path / "llama", "llama")
    validate_doc_masking(compose_cfg(["experiment=demo_zh", "debug=smoke", f"model.name_or_path={llama_dir}",
                                      "data.doc_masking=true"]))
    validate_doc_masking(compose_cfg(["model=tiny", "data.doc_masking=true"]))  # random init: a Llama


class Tokenizer:
    """What pipeline.build_model reads of a tokenizer."""

    bos_token_id, eos_token_id = None, EOS

    def __len__(self) -> int:
        return VOCAB


def test_build_model_refuses_an_unlisted_model_type(compose_cfg, tmp_path, monkeypatch):
    """A hub id's type is first known when it loads: pipeline.build_model checks it before any training."""
    from cptlab.run import pipeline
    from cptlab.run.plan_values import parts_of

    cfg = compose_cfg(["debug=smoke", "data.doc_masking=true"], output_dir=tmp_path)
    model, _ = pipeline.build_model(parts_of(cfg), Tokenizer())
    assert model.config.model_type == "llama"
    real = pipeline.load_model

    def as_gpt2(*args, **kwargs):
        built = real(*args, **kwargs)
        built.config.model_type = "gpt2"
        return built

    monkeypatch.setattr(pipeline, "load_model", as_gpt2)
    with pytest.raises(CptlabError, match="model type 'gpt2'"):
        pipeline.build_model(parts_of(cfg), Tokenizer())

"""adapter=block_expansion (LLaMA Pro): placement of the copies, the expanded model computes the base function
at step 0 (logits and cached generation), only the new blocks (and new rows) train while every original block
stays bit for bit, and a run with vocabulary extension and a two-stage schedule exports a plain Hugging Face
model that reloads with the trained logits."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf, open_dict
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from cptlab.errors import CptlabError
from cptlab.model.adapter import apply_adapter
from cptlab.model.expand import check_expansion_config, expand_blocks, insert_after, new_blocks_of, original_index
from cptlab.model.freeze import adapter_params_of

SIZES = dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
             max_position_embeddings=64, tie_word_embeddings=False)


def llama(layers=4, vocab=96) -> LlamaForCausalLM:
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=vocab, num_hidden_layers=layers, **SIZES))
    model.config.use_cache = False
    return model.eval()


def adapter(**kw):
    base = {"name": "block_expansion", "blocks": 2, "placement": "interleave", "train_new_tokens": False,
            "r": 8, "alpha": 16.0, "dropout": 0.0, "rslora": False, "target_modules": ["q_proj"]}
    return OmegaConf.create({**base, **kw})


# -- placement and configuration -----------------------------------------------------------------------


def test_interleave_copies_the_last_block_of_each_group_like_llama_pro():
    assert insert_after(32, 8, "interleave") == [3, 7, 11, 15, 19, 23, 27, 31]
    assert insert_after(4, 2, "interleave") == [1, 3]
    assert insert_after(5, 2, "interleave") == [1, 4]
    assert insert_after(4, 2, "end") == [3, 3]
    assert insert_after(4, 2, [2, 0]) == [0, 2]


@pytest.mark.parametrize("kw, message", [
    ({"blocks": 0}, r"adapter.blocks=0 must be an integer >= 1"),
    ({"placement": "middle"}, r"adapter.placement='middle' must be one of interleave, end"),
    ({"placement": [1]}, r"adapter.placement=\[1\] names 1 blocks but adapter.blocks=2"),
    ({"placement": [1, -1]}, r"block indices must be integers >= 0"),
])
def test_bad_expansion_config_names_the_key(kw, message):
    with pytest.raises(CptlabError, match=message):
        check_expansion_config(adapter(**kw))


def test_impossible_placements_for_the_model_name_the_key():
    with pytest.raises(CptlabError, match=r"adapter.blocks=5 exceeds the model's 4 blocks"):
        apply_adapter(llama(), adapter(blocks=5), base_rows=96)
    with pytest.raises(CptlabError, match=r"adapter.placement: block 4 does not exist \(the model has 4 blocks"):
        apply_adapter(llama(), adapter(placement=[1, 4]), base_rows=96)


def test_the_composed_config_validates(compose_cfg):
    from cptlab.run.validate import validate

    cfg = compose_cfg(["experiment=demo_zh", "debug=smoke", "adapter=block_expansion"])
    assert cfg.adapter.blocks == 2 and cfg.adapter.placement == "interleave"
    validate(cfg)
    with pytest.raises(CptlabError, match=r"^adapter.blocks=0 must be"):
        validate(compose_cfg(["experiment=demo_zh", "debug=smoke", "adapter=block_expansion", "adapter.blocks=0"]))
    with pytest.raises(CptlabError, match=r"^adapter.blocks=3 exceeds the model's 2 blocks"):  # before any heavy work
        validate(compose_cfg(["experiment=demo_zh", "debug=smoke", "adapter=block_expansion", "adapter.blocks=3"]))
    with pytest.raises(CptlabError, match=r"^adapter.placement: block 5 does not exist"):
        validate(compose_cfg(["experiment=demo_zh", "debug=smoke", "adapter=block_expansion",
                              "adapter.placement=[0,5]"]))


# -- the expanded model is the base function -----------------------------------------------------------


@pytest.mark.parametrize("placement", ["interleave", "end", [0, 2]])
def test_expanded_model_computes_the_base_logits_and_generates_the_same(placement):
    base, model = llama(), llama()
    x = torch.randint(0, 96, (2, 12), generator=torch.Generator().manual_seed(0))
    new = expand_blocks(model, 2, placement)
    assert model.config.num_hidden_layers == 6 and len(model.model.layers) == 6
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == list(range(6))
    assert new_blocks_of(model) == tuple(new)
    for i, layer in enumerate(model.model.layers):
        if i in new:
            assert not layer.self_attn.o_proj.weight.any() and not layer.mlp.down_proj.weight.any()
            assert layer.self_attn.q_proj.weight.data_ptr() != model.model.layers[i - 1].self_attn.q_proj.weight.data_ptr()
    for i, j in original_index(model).items():  # the original blocks are the very same modules
        assert model.model.layers[i] is not None and torch.equal(model.model.layers[i].mlp.up_proj.weight,
                                                                 base.model.layers[j].mlp.up_proj.weight)
    with torch.no_grad():
        want, got = base(input_ids=x).logits, model(input_ids=x).logits
    assert (got - want).abs().max().item() <= 1e-5
    model.config.use_cache = base.config.use_cache = True  # the KV cache indexes layers by layer_idx
    a = base.generate(x[:1, :4], max_new_tokens=6, do_sample=False)
    b = model.generate(x[:1, :4], max_new_tokens=6, do_sample=False)
    assert torch.equal(a, b)


def test_per_layer_types_follow_the_copies():
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=64, num_hidden_layers=2, use_sliding_window=True, sliding_window=4, max_window_layers=1,
                      **SIZES)
    base = Qwen2ForCausalLM(cfg).eval()
    model = Qwen2ForCausalLM(copy.deepcopy(cfg)).eval()  # expansion edits the model's config
    model.load_state_dict(base.state_dict())
    before = list(model.config.layer_types)
    expand_blocks(model, 2, "interleave")
    assert model.config.layer_types == [before[0], before[0], before[1], before[1]]
    x = torch.randint(0, 64, (1, 10))
    with torch.no_grad():
        assert (model(input_ids=x).logits - base(input_ids=x).logits).abs().max().item() <= 1e-5


# -- training: only the new blocks move -----------------------------------------------------------------


class Stream:
    def __init__(self, vocab, batch=4, seq=16):
        self.vocab, self.batch_size, self.seq = vocab, batch, seq
        self.domains = [SimpleNamespace(name="x", role="new")]

    def batch(self, step, rank=0, world_size=1):
        g = torch.Generator().manual_seed(1000 + step)
        tokens = torch.randint(0, self.vocab, (self.batch_size, self.seq + 1), generator=g)
        return {"input_ids": tokens[:, :-1], "targets": tokens[:, 1:]}

    def counts(self, step):
        return {"x": self.batch_size}


def test_two_stage_training_moves_only_new_rows_then_new_blocks():
    from cptlab.data.datamodule import CPTDataModule
    from cptlab.run.plan_values import freeze_plan
    from cptlab.training.module import CPTModule
    from cptlab.training.schedule import LRSchedule

    model = llama()
    model.train()
    torch.manual_seed(0)
    model.resize_token_embeddings(128, mean_resizing=False)
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = adapter(train_new_tokens=True)
    model = apply_adapter(model, cfg, base_rows=96)
    schedule = OmegaConf.create({"name": "two_stage", "stage1_steps": 2, "stage1_rows": "new", "rewarm": False,
                                 "phases": None})
    plan = freeze_plan(model, schedule, cfg)
    module = CPTModule(model, lr=1e-2, weight_decay=0.1, betas=[0.9, 0.95], eps=1e-8,
                       schedule=LRSchedule(total_steps=5, warmup_steps=1), freeze=plan)
    new = set(new_blocks_of(model))
    new_names = adapter_params_of(model)
    assert new_names and all(int(n.split(".")[2]) in new for n in new_names)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=5, gradient_clip_val=1.0, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, limit_val_batches=0, use_distributed_sampler=False)
    trainer.fit(module, datamodule=CPTDataModule(Stream(128)))
    after = dict(model.named_parameters())
    mapping = original_index(model)
    for name, p in after.items():
        parts = name.split(".")
        if name in new_names:
            if parts[-2] in ("o_proj", "down_proj"):
                assert p.detach().any(), name  # the zeroed outputs learned
        elif name.endswith(("embed_tokens.weight", "lm_head.weight")):
            assert torch.equal(p[:96], base[name][:96]) and not torch.equal(p[96:], base[name][96:]), name
        elif parts[1] == "layers":
            original = ".".join([*parts[:2], str(mapping[int(parts[2])]), *parts[3:]])
            assert torch.equal(p, base[original]), name  # every original block: bit for bit
        else:
            assert torch.equal(p, start[name]), name


# -- a run: extension + two stages + block expansion, exported --------------------------------------------


@pytest.fixture(scope="module")
def expanded_run(tmp_path_factory, compose_cfg):
    """A smoke base published like the demo base, then continued on Chinese with an extended vocabulary,
    two stages (new rows, then new blocks + new rows) and two new blocks; trained in this process."""
    from cptlab.cli.train_app import train
    from cptlab.run.build import build_run
    from cptlab.run.validate import validate

    root = tmp_path_factory.mktemp("expand")
    cfg = compose_cfg(["experiment=demo_base", "debug=smoke", "trainer.max_steps=2"], root / "base_run")
    with open_dict(cfg):
        cfg.publish_dir = str(root / "base")
    assert train(cfg, root / "base_run")[0]["status"] == "completed"
    run_dir = root / "run"
    cfg = compose_cfg(["experiment=demo_zh", "debug=smoke", "tokenizer=extend", f"model.name_or_path={root / 'base'}",
                       "model.random_init=false", "tokenizer.vocab_size=2000", "schedule=two_stage",
                       "schedule.stage1_steps=2", "adapter=block_expansion", "adapter.train_new_tokens=true",
                       "trainer.max_steps=4", "eval.every_n_steps=4", "checkpoint.every_n_steps=4"], run_dir)
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    built = build_run(validate(cfg), run_dir)
    model, base_rows, run = built.model, built.base_rows, built.lightning
    step0 = dict(run.evaluator.eval_sets)
    with torch.no_grad():
        batch, english = step0["zh"][:2, :-1], step0["en"][:2, :-1]
        logits0, english0 = model(input_ids=batch).logits, model(input_ids=english).logits
    built.fit()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=batch).logits
    return SimpleNamespace(root=root, base=root / "base", run_dir=run_dir, model=model, base_rows=base_rows,
                           batch=batch, logits0=logits0, logits=logits, english=english, english0=english0)


def test_run_starts_as_the_base_and_keeps_every_original_block(expanded_run):
    from transformers import AutoModelForCausalLM

    r = expanded_run
    base = AutoModelForCausalLM.from_pretrained(r.base).eval()
    rows = r.base_rows
    assert (r.english < rows).all()  # English segments as in the base: base ids only
    with torch.no_grad():
        want = base(input_ids=r.english).logits
    assert (r.english0[..., :rows] - want).abs().max().item() <= 1e-5  # step 0: the base function
    assert r.model.config.num_hidden_layers == base.config.num_hidden_layers + 2
    base_params = dict(base.named_parameters())
    mapping = original_index(r.model)
    for name, p in r.model.named_parameters():
        parts = name.split(".")
        if parts[1] == "layers" and int(parts[2]) in mapping:
            original = ".".join([*parts[:2], str(mapping[int(parts[2])]), *parts[3:]])
            assert torch.equal(p, base_params[original]), name
        elif name.endswith(("embed_tokens.weight", "lm_head.weight")):
            assert torch.equal(p[:rows], base_params[name][:rows]), name
    assert not torch.equal(r.logits, r.logits0)  # it trained
    # the learning-rate curves of what trains: the new rows (stage 1 and 2) and the new blocks (rest)
    header = (r.run_dir / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {c for c in header if c.startswith("lr")} == {"lr", "lr/new_rows", "lr/rest"}


def test_export_is_a_plain_model_with_the_extra_layers_and_the_trained_logits(expanded_run, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cptlab.run.export import export_run

    r = expanded_run
    out = export_run(r.run_dir, tmp_path / "export")
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.config.num_hidden_layers == r.model.config.num_hidden_layers == len(model.model.layers)
    with torch.no_grad():
        got = model(input_ids=r.batch).logits
    assert (got - r.logits).abs().max().item() <= 1e-5
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = tokenizer("人民日报", return_tensors="pt").input_ids
    assert model.generate(ids, max_new_tokens=4, do_sample=False).shape[1] == ids.shape[1] + 4
    with pytest.raises(CptlabError, match="adds whole decoder blocks"):
        export_run(r.run_dir, tmp_path / "adapter", adapter_only=True)


def test_merge_interpolates_from_the_zero_output_blocks(expanded_run):
    """cptlab-merge on a block-expansion run: theta_0 is the expanded model at step 0 (zero-output copies,
    initial new rows), so alpha=0 scores the run's step-0 bpb and alpha=1 its final bpb."""
    import csv

    from cptlab.run.merge import load_interpolation, merge_run

    r = expanded_run
    with open(r.run_dir / "metrics.csv", newline="") as f:
        rows = [row for row in csv.DictReader(f) if row.get("val/zh/bpb")]
    first, last = rows[0], rows[-1]
    record = merge_run(r.run_dir, [0.0, 1.0])
    for point, row in zip(record["points"], (first, last)):
        for domain in ("zh", "en"):
            assert abs(point["bpb"][domain] - float(row[f"val/{domain}/bpb"])) <= 1e-6, (point["alpha"], domain)
    interp = load_interpolation(r.run_dir)
    new = [n for n in interp.start if n.endswith("o_proj.weight")]
    assert new and all(not interp.start[n].any() and interp.end[n].any() for n in new)

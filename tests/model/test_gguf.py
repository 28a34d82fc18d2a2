"""model.gguf: a GGUF file converted once (keyed by its fingerprint) into a plain HF directory whose model and
tokenizer match what transformers reads from the GGUF itself; missing packages are one line. Then the whole
path on a tied-embedding base: vocabulary extension + LoRA + new token rows, exported and reloaded with plain
transformers, generating exactly what the trained model does in process. The GGUF is written by the test."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("gguf", reason="the gguf package (dev extra) writes the test's GGUF file")

from cptlab.errors import CptlabError  # noqa: E402
from cptlab.model import gguf as gguf_mod  # noqa: E402

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Continued pre-training keeps what a model knew.",
         "def add(a, b):\n    return a + b\n", "Numbers: 1234 5678, tabs\tand  spaces."] * 20
HIDDEN, FFN, LAYERS, HEADS, KV_HEADS = 32, 64, 2, 4, 2


def tiny_bpe() -> tuple[list[str], list[int], list[str]]:
    """(tokens by id, token types, merges) of a byte-level BPE trained on TEXTS; id 0 is <|endoftext|>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(TEXTS, trainer)
    model = json.loads(tokenizer.to_str())["model"]
    vocab = sorted(model["vocab"].items(), key=lambda kv: kv[1])
    assert [i for _, i in vocab] == list(range(len(vocab)))
    tokens = [t for t, _ in vocab]
    types = [3 if t == "<|endoftext|>" else 1 for t in tokens]  # 3: CONTROL, 1: NORMAL
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    return tokens, types, merges


def write_tiny_gguf(path: Path, seed: int = 0) -> Path:
    """A tiny Llama GGUF (float32 tensors, no output.weight: tied embeddings) with a byte-level BPE."""
    import gguf

    tokens, types, merges = tiny_bpe()
    rng = np.random.default_rng(seed)

    def w(*shape):
        return (rng.standard_normal(shape) * 0.2).astype(np.float32)

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-llama")
    writer.add_context_length(128)
    writer.add_embedding_length(HIDDEN)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(HIDDEN // HEADS)
    writer.add_rope_freq_base(10000.0)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(0)
    head_dim = HIDDEN // HEADS
    writer.add_tensor("token_embd.weight", w(len(tokens), HIDDEN))
    for i in range(LAYERS):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", 1 + w(HIDDEN))
        writer.add_tensor(f"blk.{i}.attn_q.weight", w(HIDDEN, HIDDEN))
        writer.add_tensor(f"blk.{i}.attn_k.weight", w(KV_HEADS * head_dim, HIDDEN))
        writer.add_tensor(f"blk.{i}.attn_v.weight", w(KV_HEADS * head_dim, HIDDEN))
        writer.add_tensor(f"blk.{i}.attn_output.weight", w(HIDDEN, HIDDEN))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", 1 + w(HIDDEN))
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", w(FFN, HIDDEN))
        writer.add_tensor(f"blk.{i}.ffn_up.weight", w(FFN, HIDDEN))
        writer.add_tensor(f"blk.{i}.ffn_down.weight", w(HIDDEN, FFN))
    writer.add_tensor("output_norm.weight", 1 + w(HIDDEN))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf")


def test_converted_directory_matches_the_gguf_model_and_tokenizer(tiny_gguf, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = gguf_mod.converted_dir(str(tiny_gguf), tmp_path / "cache")
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.tie_word_embeddings
    assert getattr(model.config, "quantization_config", None) is None  # a plain directory, not a quantised one
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    reference = AutoModelForCausalLM.from_pretrained(tiny_gguf.parent, gguf_file=tiny_gguf.name, dtype=torch.float32)
    ref_tokenizer = AutoTokenizer.from_pretrained(tiny_gguf.parent, gguf_file=tiny_gguf.name)
    text = "The lazy fox returns a + b\n\tspaces  1234 and bytes: é 中"
    ids = tokenizer(text).input_ids
    assert ids == ref_tokenizer(text).input_ids and tokenizer.decode(ids) == text
    assert tokenizer.eos_token == "<|endoftext|>"
    batch = torch.tensor([ids])
    model.eval()
    reference.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(batch).logits, reference(batch).logits, atol=0, rtol=0)
    info = json.loads((out / gguf_mod.INFO).read_text())
    assert info["source"] == str(tiny_gguf)


def test_conversion_is_cached_by_fingerprint_and_built_once(tiny_gguf, tmp_path, spy):
    calls = spy(gguf_mod, "convert")
    cache = tmp_path / "cache"
    first = gguf_mod.converted_dir(str(tiny_gguf), cache)
    assert len(calls) == 1
    assert gguf_mod.converted_dir(str(tiny_gguf), cache) == first and len(calls) == 1  # found complete
    renamed = tmp_path / "renamed.gguf"
    renamed.write_bytes(tiny_gguf.read_bytes())
    assert gguf_mod.converted_dir(str(renamed), cache) == first and len(calls) == 1  # same content, same entry
    changed = write_tiny_gguf(tmp_path / "changed.gguf", seed=1)
    other = gguf_mod.converted_dir(str(changed), cache)
    assert other != first and len(calls) == 2
    assert sorted(p.name for p in (cache / "gguf").iterdir() if not p.name.endswith(".lock")) == sorted(
        [first.name, other.name])


def test_random_init_converts_only_config_and_tokenizer(tiny_gguf, tmp_path):
    """model.random_init needs the architecture and the tokenizer, not the weights: seconds, not a de-quantisation;
    the tokenizer is the full conversion's (so extension caches are shared), and a full one is preferred."""
    from transformers import AutoConfig

    from cptlab.utils.hashing import hash_file

    cache = tmp_path / "cache"
    light = gguf_mod.converted_dir(str(tiny_gguf), cache, weights=False)
    assert not list(light.glob("*.safetensors")) and (light / "tokenizer.json").is_file()
    config = AutoConfig.from_pretrained(light)
    assert (config.hidden_size, config.num_hidden_layers, config.tie_word_embeddings) == (HIDDEN, LAYERS, True)
    assert getattr(config, "quantization_config", None) is None
    full = gguf_mod.converted_dir(str(tiny_gguf), cache)
    assert full != light and hash_file(full / "tokenizer.json") == hash_file(light / "tokenizer.json")
    assert gguf_mod.converted_dir(str(tiny_gguf), cache, weights=False) == full


def test_missing_package_or_file_is_one_line(tmp_path, monkeypatch):
    with pytest.raises(CptlabError, match=r"model.gguf=no_such_pkg_cptlab:x.gguf: the package 'no_such_pkg_cptlab' "
                                          r"is not installed; make install-real") as info:
        gguf_mod.check_gguf("no_such_pkg_cptlab:x.gguf")
    assert "\n" not in str(info.value)
    with pytest.raises(CptlabError, match="GGUF file not found"):
        gguf_mod.check_gguf(str(tmp_path / "absent.gguf"))
    real_find_spec = gguf_mod.importlib.util.find_spec
    monkeypatch.setattr(gguf_mod.importlib.util, "find_spec",
                        lambda name, *a: None if name == "gguf" else real_find_spec(name, *a))
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    with pytest.raises(CptlabError, match="needs the `gguf` package.*make install-real"):
        gguf_mod.check_gguf(str(tmp_path / "m.gguf"))


def test_model_smollm2_without_its_package_fails_validation_in_one_line(compose_cfg):
    from cptlab.run.validate import validate

    cfg = compose_cfg(["model=smollm2", "tokenizer=extend", "data=demo_zh", "model.gguf=no_such_pkg_cptlab:x.gguf"])
    with pytest.raises(CptlabError, match="model.gguf=no_such_pkg_cptlab:x.gguf.*make install-real"):
        validate(cfg)


def test_cli_converts_and_prints_the_directory(tiny_gguf, tmp_path, capsys):
    gguf_mod.main([str(tiny_gguf), "--cache", str(tmp_path / "cache")])
    out = Path(capsys.readouterr().out.strip())
    assert (out / "config.json").is_file() and (out / "tokenizer.json").is_file()
    with pytest.raises(SystemExit) as info:
        gguf_mod.main(["no_such_pkg_cptlab:x.gguf", "--cache", str(tmp_path / "cache")])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cptlab gguf: error: model.gguf=no_such_pkg_cptlab:x.gguf")


def test_tied_base_extended_with_lora_exports_and_generates_identically(tiny_gguf, compose_cfg, tmp_path):
    """A GGUF base with tied embeddings, extended for Chinese, two-stage LoRA + new token rows: cptlab-export
    gives a plain directory that greedy-generates exactly what the trained in-process model generates."""
    from omegaconf import OmegaConf
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cptlab.model.export import merged_model
    from cptlab.run.build import build_run
    from cptlab.run.export import export_run
    from cptlab.run.validate import validate
    from cptlab.tokenizer.hf import load_tokenizer

    run_dir = tmp_path / "run"
    cfg = compose_cfg(["experiment=smollm2_zh", "debug=smoke", f"model.gguf={tiny_gguf}", "model.random_init=false",
                       "model.config=null", "tokenizer.vocab_size=600", "trainer.max_steps=4",
                       "schedule.stage1_steps=2", "eval.every_n_steps=4", "checkpoint.every_n_steps=4",
                       "adapter.r=4", "adapter.dropout=0.0", "data.max_docs=200"], output_dir=run_dir)
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    built = build_run(validate(cfg), run_dir)
    tokenizer, base_rows, run = built.tokenizer, built.base_rows, built.lightning
    base_tokenizer = load_tokenizer(built.base_dir)
    assert len(tokenizer) > len(base_tokenizer)  # extended
    assert base_rows == len(base_tokenizer)
    built.fit()
    run.trainer.save_checkpoint(run_dir / "checkpoints" / "last.ckpt")

    out = export_run(run_dir, tmp_path / "export")
    exported = AutoModelForCausalLM.from_pretrained(out).eval()
    exported_tokenizer = AutoTokenizer.from_pretrained(out)
    assert exported.config.tie_word_embeddings
    assert exported.get_output_embeddings().weight.data_ptr() == exported.get_input_embeddings().weight.data_ptr()
    in_process = merged_model(run.module.model).eval()
    prompt = exported_tokenizer("人民日报 The quick", return_tensors="pt").input_ids
    assert prompt.tolist() == tokenizer("人民日报 The quick", return_tensors="pt").input_ids.tolist()
    assert (prompt >= base_rows).any()  # the prompt uses new tokens
    with torch.no_grad():
        torch.testing.assert_close(exported(prompt).logits, in_process(prompt).logits, atol=1e-5, rtol=0)
        want = in_process.generate(prompt, max_new_tokens=8, do_sample=False)
        got = exported.generate(prompt, max_new_tokens=8, do_sample=False)
    assert got.tolist() == want.tolist()

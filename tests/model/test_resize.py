"""Embedding growth for an extended tokenizer: old rows kept bit for bit (tied and untied heads), new rows
initialised by their definitions, padding to a multiple, and a model that still runs, saves and reloads."""

from __future__ import annotations

import random

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from cptlab.errors import CptlabError
from cptlab.model.resize import grow_embeddings
from cptlab.tokenizer.bpe_extend import extend_bpe, token_bytes
from cptlab.tokenizer.extend import extend_spm
from cptlab.tokenizer.hf import export_hf_tokenizer, load_tokenizer
from cptlab.tokenizer.spm import load_spm, train_spm

WORDS = "the of and to in a is that for it as was with be by on not he this are or his from at which".split()
CHARS = (
    "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成"
    "会可主发年动同工也能下过子说产种面而方后多定"
)


def english(n, seed=0):
    rnd = random.Random(seed)
    return [" ".join(rnd.choices(WORDS, k=rnd.randint(5, 15))) + f" {rnd.randint(0, 999)}." for _ in range(n)]


def chinese(n, seed=0):
    rnd = random.Random(seed)
    words = [CHARS[i : i + 2] for i in range(0, len(CHARS) - 1, 3)] + list(CHARS)
    return ["".join(rnd.choices(words, k=rnd.randint(10, 30))) + rnd.choice(["。", " 的 ", "，"]) for _ in range(n)]


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    """(base HF dir, extended HF dir) for a tiny English SentencePiece base extended with Chinese."""
    root = tmp_path_factory.mktemp("resize")
    base_model = train_spm(english(300), root / "base", vocab_size=300)
    export_hf_tokenizer(base_model, root / "base")
    extend_spm(base_model, chinese(300), root / "extended", vocab_size=500)
    return root / "base", root / "extended"


def tiny_llama(vocab_size: int, tied: bool, seed: int = 0) -> LlamaForCausalLM:
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=tied)  # fmt: skip
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def snapshot(model):
    return model.get_input_embeddings().weight.detach().clone(), model.get_output_embeddings().weight.detach().clone()


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("init", ["random", "mean", "subword_mean"])
def test_old_rows_are_bitwise_unchanged(tokenizers, tied, init):
    base_dir, ext_dir = tokenizers
    new_size = len(load_tokenizer(ext_dir))
    model = tiny_llama(300, tied)
    old_in, old_out = snapshot(model)
    stats = grow_embeddings(model, new_size, init=init, base_tokenizer=base_dir, new_tokenizer=ext_dir)
    padded = -(-new_size // 64) * 64
    assert stats == {"old_rows": 300, "new_rows": new_size - 300, "padded_rows": padded - new_size, "init": init,
                     "fallback_rows": 0}  # fmt: skip
    new_in, new_out = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    assert new_in.shape == new_out.shape == (padded, 16) and model.config.vocab_size == padded
    assert torch.equal(new_in[:300], old_in) and torch.equal(new_out[:300], old_out)
    assert (new_in.data_ptr() == new_out.data_ptr()) == tied


@pytest.mark.parametrize("tied", [True, False])
def test_mean_rows_are_the_mean_of_old_rows(tied):
    model = tiny_llama(300, tied)
    old_in, old_out = snapshot(model)
    grow_embeddings(model, 350, init="mean")
    new_in, new_out = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    for new, old in ((new_in, old_in), (new_out, old_out)):
        # new tokens and padding rows [350, 384) alike
        assert torch.allclose(new[300:], old.mean(dim=0).expand(84, -1), atol=1e-7)
    if not tied:
        assert not torch.allclose(new_in[300], new_out[300])


@pytest.mark.parametrize("tied", [True, False])
def test_subword_mean_rows_match_their_definition(tokenizers, tied):
    base_dir, ext_dir = tokenizers
    base_sp = load_spm(base_dir / "tokenizer.model")
    ext = load_tokenizer(ext_dir)
    model = tiny_llama(300, tied)
    old_in, old_out = snapshot(model)
    grow_embeddings(model, len(ext), init="subword_mean", base_tokenizer=load_tokenizer(base_dir), new_tokenizer=ext)
    new_in, new_out = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    pieces = ext.convert_ids_to_tokens(list(range(300, len(ext))))
    chosen = [pieces.index("中")] + [i for i, p in enumerate(pieces) if len(p) > 1][:3]
    chosen += [i for i, p in enumerate(pieces) if p.startswith("▁")][:2]
    assert len(chosen) >= 4
    for offset in chosen:
        # The piece's text through SentencePiece itself (this base has no dummy prefix): byte pieces for
        # Chinese characters, "▁" for a space.
        base_ids = base_sp.encode(pieces[offset].replace("▁", " "))
        assert base_ids and all(i < 300 for i in base_ids)
        assert torch.allclose(new_in[300 + offset], old_in[base_ids].mean(dim=0), atol=1e-7)
        assert torch.allclose(new_out[300 + offset], old_out[base_ids].mean(dim=0), atol=1e-7)
    assert torch.allclose(new_in[len(ext) :], old_in.mean(dim=0).expand(new_in.shape[0] - len(ext), -1), atol=1e-7)


def test_subword_mean_for_byte_level_tokens(tmp_path):
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(english(300), trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))  # fmt: skip
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>").save_pretrained(str(tmp_path / "b"))
    extend_bpe(tmp_path / "b", chinese(300), tmp_path / "e", vocab_size=600)
    base, ext = load_tokenizer(tmp_path / "b"), load_tokenizer(tmp_path / "e")
    model = tiny_llama(len(base), tied=False)
    old_in, old_out = snapshot(model)
    stats = grow_embeddings(model, len(ext), init="subword_mean", base_tokenizer=base, new_tokenizer=ext)
    assert stats["fallback_rows"] == 0
    new_in, new_out = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    checked = 0
    for new_id, token in enumerate(ext.convert_ids_to_tokens(list(range(len(base), len(ext)))), start=len(base)):
        try:
            text = token_bytes(token).decode("utf-8")
        except UnicodeDecodeError:
            continue  # a piece of a character: no text to encode on its own
        base_ids = base.encode(text, add_special_tokens=False)
        assert torch.allclose(new_in[new_id], old_in[base_ids].mean(dim=0), atol=1e-7)
        assert torch.allclose(new_out[new_id], old_out[base_ids].mean(dim=0), atol=1e-7)
        checked += 1
    assert checked > 50


def test_random_init_is_deterministic_per_seed():
    rows = []
    for seed in (1, 1, 2):
        model = tiny_llama(300, tied=False)
        grow_embeddings(model, 350, init="random", seed=seed)
        rows.append(snapshot(model))
    assert torch.equal(rows[0][0], rows[1][0]) and torch.equal(rows[0][1], rows[1][1])
    assert not torch.equal(rows[0][0][300:350], rows[2][0][300:350])
    assert not torch.equal(rows[0][0][300:350], rows[0][1][300:350])  # input and output drawn apart
    assert 0.01 < rows[0][0][300:350].std().item() < 0.03  # initializer_range 0.02


def test_padding_and_errors():
    model = tiny_llama(300, tied=True)
    assert grow_embeddings(model, 310, init="mean", pad_to_multiple_of=None)["padded_rows"] == 0
    assert model.get_input_embeddings().weight.shape[0] == 310 == model.config.vocab_size
    assert grow_embeddings(model, 320, init="mean", pad_to_multiple_of=128)["padded_rows"] == 64
    with pytest.raises(CptlabError, match="already has 384 rows"):
        grow_embeddings(model, 350, init="mean")
    with pytest.raises(CptlabError, match=r"tokenizer\.init=subword_mean needs"):
        grow_embeddings(model, 400, init="subword_mean")


@pytest.mark.parametrize("tied", [True, False])
def test_resized_model_runs_and_round_trips(tokenizers, tmp_path, tied):
    base_dir, ext_dir = tokenizers
    ext = load_tokenizer(ext_dir)
    model = tiny_llama(300, tied)
    grow_embeddings(model, len(ext), init="subword_mean", base_tokenizer=base_dir, new_tokenizer=ext_dir)
    ids = torch.tensor([ext.encode("the 中国人 of 的")])
    assert ids.max() >= 300
    model.eval()
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], model.config.vocab_size) and torch.isfinite(logits).all()
    model.save_pretrained(tmp_path)
    reloaded = LlamaForCausalLM.from_pretrained(tmp_path).eval()
    assert reloaded.config.vocab_size == model.config.vocab_size
    assert torch.equal(reloaded.get_output_embeddings().weight, model.get_output_embeddings().weight)
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, logits)

"""A GGUF file's vocabulary as an extendable base (cptlab.tokenizer.gguf): SentencePiece-type vocabularies come back as
the SentencePiece model they were converted from, byte-level BPE ones as a tokenizer.json splitting words as
llama.cpp does for their tokenizer.ggml.pre; WordPiece and broken files are one line. The GGUF files are written
here with gguf.GGUFWriter from tokenizers trained in the test (no download)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

pytest.importorskip("gguf", reason="the gguf package (dev extra) writes the test's GGUF files")

from cptlab.errors import CptlabError  # noqa: E402
from cptlab.tokenizer import gguf as vocab_gguf  # noqa: E402
from cptlab.tokenizer.hf import _read_proto, load_tokenizer  # noqa: E402
from cptlab.tokenizer.spm import load_spm  # noqa: E402

CHARS = ("的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成"
         "会可主发年动同工也能下过子说产种面而方后多定")
TEXTS = ["Hello world.", " leading space", "runs  of   spaces\tand\ttabs\n\nnew lines", "digits 1234567 and 3.14",
         "emoji 🙂 and 中文", "def f(x):\n    return x + 1\n", "</s> literal", ""]


def write_vocab(path: Path, model: str, tokens: list[str], types: list[int], *, scores=None, merges=None, pre=None,
                special: dict[str, int] | None = None, add_space_prefix: bool | None = None) -> Path:
    """A vocab-only GGUF, as llama.cpp's convert_hf_to_gguf.py --vocab-only writes one."""
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tokenizer_model(model)
    if pre is not None:
        writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    if scores is not None:
        writer.add_token_scores(scores)
    if merges is not None:
        writer.add_token_merges(merges)
    for name, index in (special or {}).items():
        getattr(writer, {"bos": "add_bos_token_id", "eos": "add_eos_token_id", "unk": "add_unk_token_id",
                         "pad": "add_pad_token_id"}[name])(index)  # fmt: skip
    if add_space_prefix is not None:
        writer.add_add_space_prefix(add_space_prefix)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    return path


def spm_gguf(path: Path, model_file: Path, model: str = "llama", **kwargs) -> Path:
    proto = _read_proto(model_file)
    spec = proto.trainer_spec
    return write_vocab(path, model, [p.piece for p in proto.pieces], [p.type for p in proto.pieces],
                       scores=[p.score for p in proto.pieces],
                       special={"unk": spec.unk_id, "bos": spec.bos_id, "eos": spec.eos_id},
                       add_space_prefix=proto.normalizer_spec.add_dummy_prefix, **kwargs)  # fmt: skip


@pytest.fixture(scope="module")
def llama_like(tmp_path_factory, make_docs, train_raw) -> tuple[Path, Path]:
    """(a Llama-style SentencePiece BPE: dummy prefix, byte fallback; its GGUF)."""
    root = tmp_path_factory.mktemp("llama_like")
    model = train_raw(root / "spm", make_docs(300), vocab_size=500, add_dummy_prefix=True)
    return model, spm_gguf(root / "llama-like.gguf", model)


@pytest.fixture(scope="module")
def byte_level(tmp_path_factory, make_docs):
    """(a byte-level BPE trained with GPT-2's split, its vocab-only GGUF with tokenizer.ggml.pre=gpt-2)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(make_docs(300), trainer)
    model = json.loads(tokenizer.to_str())["model"]
    tokens = [t for t, _ in sorted(model["vocab"].items(), key=lambda kv: kv[1])]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    types = [3 if t == "<|endoftext|>" else 1 for t in tokens]
    root = tmp_path_factory.mktemp("byte_level")

    def write(pre: str | None = "gpt-2", name: str = "gpt2-like") -> Path:
        return write_vocab(root / f"{name}.gguf", "gpt2", tokens, types, merges=merges, pre=pre,
                           special={"bos": 0, "eos": 0})

    return tokenizer, write


def test_the_reader_agrees_with_gguf_reader(llama_like):
    from gguf import GGUFReader

    fields, _ = vocab_gguf.read_metadata(llama_like[1])
    for key, field in GGUFReader(llama_like[1]).fields.items():
        if not key.startswith("GGUF."):
            assert fields[key] == pytest.approx(field.contents()), key


def test_a_sentencepiece_vocabulary_comes_back_as_its_model(llama_like, tmp_path, make_fuzz, tricky_texts):
    original, path = llama_like
    assert vocab_gguf.rebuild(path, tmp_path / "out") == "spm"
    source, rebuilt = _read_proto(original), _read_proto(tmp_path / "out" / "tokenizer.model")
    assert [(p.piece, p.score, p.type) for p in rebuilt.pieces] == [(p.piece, p.score, p.type) for p in source.pieces]
    for field in ("model_type", "byte_fallback", "unk_id", "bos_id", "eos_id", "pad_id"):
        assert getattr(rebuilt.trainer_spec, field) == getattr(source.trainer_spec, field), field
    for field in ("add_dummy_prefix", "escape_whitespaces", "remove_extra_whitespaces"):
        assert getattr(rebuilt.normalizer_spec, field) == getattr(source.normalizer_spec, field), field
    texts = TEXTS + tricky_texts + make_fuzz(200, seed=3)
    assert load_spm(tmp_path / "out" / "tokenizer.model").encode(texts) == load_spm(original).encode(texts)
    hf = load_tokenizer(tmp_path / "out")  # the export is verified against SentencePiece when written
    assert [hf.encode(t, add_special_tokens=False) for t in texts] == load_spm(original).encode(texts)
    assert hf.eos_token == "</s>"


def test_float32_outlier_scores_and_unigram_vocabularies_survive(tmp_path, make_docs, train_raw):
    """LLaMA-2 keeps whitespace-run pieces at score -1e9; a t5 (unigram) vocabulary keeps its log-probabilities."""
    model = train_raw(tmp_path / "uni", make_docs(300), vocab_size=500, model_type="unigram", add_dummy_prefix=True)
    path = spm_gguf(tmp_path / "uni.gguf", model, model="t5")
    vocab_gguf.rebuild(path, tmp_path / "out")
    rebuilt = _read_proto(tmp_path / "out" / "tokenizer.model")
    assert rebuilt.trainer_spec.model_type == 1
    assert [p.score for p in rebuilt.pieces] == [p.score for p in _read_proto(model).pieces]
    proto = _read_proto(model)
    tokens = [p.piece for p in proto.pieces] + ["▁▁▁▁"]
    vocab = vocab_gguf.read_vocab(spm_gguf(tmp_path / "outlier.gguf", model))
    vocab.tokens, vocab.types, vocab.scores = tokens, vocab.types + [1], vocab.scores + [-1e9]
    assert vocab_gguf.spm_proto(vocab).pieces[-1].score == -1e9


def test_a_byte_level_vocabulary_splits_like_llama_cpp(byte_level, tmp_path, tricky_texts, make_fuzz):
    original, write = byte_level
    assert vocab_gguf.rebuild(write("gpt-2"), tmp_path / "gpt2") == "bpe"
    rebuilt = load_tokenizer(tmp_path / "gpt2")
    texts = TEXTS + tricky_texts + make_fuzz(200, seed=4)
    assert [rebuilt.encode(t, add_special_tokens=False) for t in texts] == [original.encode(t).ids for t in texts]
    assert all(rebuilt.decode(rebuilt.encode(t, add_special_tokens=False)) == t for t in texts)
    assert rebuilt.eos_token == "<|endoftext|>" and rebuilt.convert_tokens_to_ids("<|endoftext|>") == 0
    # LLaMA-3's split: digits in groups of three; its model takes a word that is a token whole.
    vocab_gguf.rebuild(write("llama-bpe", "llama3-like"), tmp_path / "llama3")
    backend = load_tokenizer(tmp_path / "llama3").backend_tokenizer
    words = [w for w, _ in backend.pre_tokenizer.pre_tokenize_str("year 1234567")]
    assert words == ["year", "Ġ", "123", "456", "7"]
    assert json.loads(backend.to_str())["model"]["ignore_merges"] is True


def test_wordpiece_unknown_pre_tokenizers_and_broken_files_are_one_line(byte_level, tmp_path):
    _, write = byte_level
    bert = write_vocab(tmp_path / "bert.gguf", "bert", ["[PAD]", "[UNK]", "hello", "##lo"], [3, 2, 1, 1])
    with pytest.raises(CptlabError, match=r"bert.gguf: tokenizer.ggml.model=bert is a WordPiece \(bert\) vocabulary, "
                                          "which cannot be extended"):
        vocab_gguf.rebuild(bert, tmp_path / "out")
    with pytest.raises(CptlabError, match="tokenizer.ggml.pre=no-such-pre is not a pre-tokenizer cptlab knows"):
        vocab_gguf.rebuild(write("no-such-pre", "odd"), tmp_path / "out")
    good = write()
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    not_gguf = tmp_path / "model.gguf"
    not_gguf.write_bytes(b"PK\x03\x04" + bytes(100))
    for path, reason in ((truncated, "truncated"), (not_gguf, "not b'GGUF'")):
        with pytest.raises(CptlabError) as info:
            vocab_gguf.read_vocab(path)
        assert str(path) in str(info.value) and reason in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(CptlabError, match="absent.gguf does not exist"):
        vocab_gguf.tokenizer_dir(tmp_path / "absent.gguf")


def _chinese(n: int = 400, seed: int = 0) -> list[str]:
    rnd = random.Random(seed)
    words = [CHARS[i:i + 2] for i in range(0, len(CHARS) - 1, 3)] + list(CHARS)
    return ["".join(rnd.choices(words, k=rnd.randint(10, 30))) + "。" for _ in range(n)]


def test_prepare_tokenizer_extends_a_gguf_base_through_one_cached_rebuild(llama_like, byte_level, tmp_path,
                                                                         make_docs, spy):
    from cptlab.tokenizer.prepare import extension_stats, prepare_tokenizer

    calls = spy(vocab_gguf, "rebuild")
    original, path = llama_like
    cache = tmp_path / "cache"
    base = prepare_tokenizer("base", tmp_path / "base", cache_root=cache, source=str(path))
    out = prepare_tokenizer("extend", tmp_path / "ext", cache_root=cache, source=str(path), texts=_chinese,
                            base_texts=lambda: make_docs(100, seed=5), vocab_size=600)  # fmt: skip
    assert len(calls) == 1 and len(list((cache / "tokenizers").glob("gguf-*[!k]"))) == 1  # one rebuild, cached
    stats = extension_stats(out)
    assert stats["added"] > 50 and stats["check_texts_changed"] == 0
    extended, before = load_spm(out / "tokenizer.model"), load_spm(original)
    assert [extended.id_to_piece(i) for i in range(before.get_piece_size())] == \
           [before.id_to_piece(i) for i in range(before.get_piece_size())]  # fmt: skip
    assert load_tokenizer(base).encode("Hello world", add_special_tokens=False) == before.encode("Hello world")
    _, write = byte_level
    bpe = prepare_tokenizer("extend", tmp_path / "bpe", cache_root=cache, source=str(write()), texts=_chinese,
                            base_texts=lambda: make_docs(100, seed=5), vocab_size=700)  # fmt: skip
    assert extension_stats(bpe)["added"] > 50 and load_tokenizer(bpe).eos_token == "<|endoftext|>"


def test_the_cli_extends_a_gguf_file(llama_like, tmp_path):
    from cptlab.cli.tokenizer import main
    from cptlab.tokenizer.prepare import extension_stats

    (tmp_path / "zh.txt").write_text("\n".join(_chinese()) + "\n", encoding="utf-8")
    main(["extend", "--base", str(llama_like[1]), "--corpus", str(tmp_path / "zh.txt"), "--vocab-size", "600",
          "--out", str(tmp_path / "out")])  # fmt: skip
    assert extension_stats(tmp_path / "out")["added"] > 50


def test_tokenizer_extend_on_a_gguf_model_reads_its_vocabulary(compose_cfg, llama_like):
    from cptlab.run.pipeline import base_tokenizer_source
    from cptlab.run.plan_values import parts_of

    cfg = compose_cfg(["model=smollm2", "tokenizer=extend", "data=demo_zh", f"model.gguf={llama_like[1]}"])
    assert base_tokenizer_source(parts_of(cfg)) == str(llama_like[1])

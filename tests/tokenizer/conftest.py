"""Tiny corpora and SentencePiece models (trained in milliseconds) shared by the tokenizer tests."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import sentencepiece as spm

from cptlab.tokenizer.hf import export_hf_tokenizer
from cptlab.tokenizer.spm import train_spm

WORDS = (
    "the of and to in a is that for it as was with be by on not he this are or his from at which but have an "
    "they you were her she there been one all we their has would when if so what out up into no more can time "
    "some could them other than then now only its over also new two may after use first any these like make"
).split()
CODE_LINES = [
    "def add(x, y):",
    "    if x < y and y > 0:",
    "        return x + y  # sum",
    "\tfor i in range(10):",
    "class Point:",
    '    s = "</s>" + \'<0x41>\' + "<s>" + "<unk>"',
    "values = [1, 2, 3]  ",
    "print(f'{x}/{y} = {x / y:.2f}')",
    "    while True:",
    "        break",
]
TRICKY = [
    "",
    "Hello world.",
    "line one\nline two\n\nafter a blank line\n",
    "tab\tseparated\tcolumns\t",
    "runs  of   spaces    and     more      here",
    " leading space",
    "trailing space ",
    "   both   ",
    "digits 12345 and 3.14159",
    "emoji 🙂👍🏽 done",
    "中文测试",
    "mixed 中文 and English 🙂 and\ttabs\n",
    "def f(x):\n    if x:\n        return x + 1\n\treturn None\n",
    "    ",
    "\n",
    "\r\n windows \r\n",
]
FUZZ_POOL = list("abcdefghij xyz  ABC\n\t0123456789.,:;!?'\"()[]{}<>/\\#_-+=*&%$@") + [
    "   ", "    ", "\n\n", "🙂", "👍🏽", "中", "文", "测试", "é", "the ", " the", "return ", "def ",
]  # fmt: skip


def english_docs(n: int = 300, seed: int = 0) -> list[str]:
    """English-like documents, some with indented code after a blank line."""
    rnd = random.Random(seed)
    docs = []
    for i in range(n):
        doc = " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(5, 15))).capitalize() + f" {rnd.randint(0, 99999)}."
        if i % 4 == 0:
            doc += "\n\n" + "\n".join(rnd.sample(CODE_LINES, 4))
        docs.append(doc)
    return docs


def fuzz_texts(n: int, seed: int = 0) -> list[str]:
    rnd = random.Random(seed)
    return ["".join(rnd.choice(FUZZ_POOL) for _ in range(rnd.randint(0, 30))) for _ in range(n)]


def train_raw_spm(path: Path, docs: list[str], **overrides) -> Path:
    """A SentencePiece model with cptlab's settings except `overrides` (e.g. a Llama-style dummy prefix)."""
    lines = [line for doc in docs for line in doc.split("\n") if line]
    options = dict(
        vocab_size=400, model_type="bpe", normalization_rule_name="identity", remove_extra_whitespaces=False,
        add_dummy_prefix=False, byte_fallback=True, split_digits=True, allow_whitespace_only_pieces=True,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, hard_vocab_limit=False, minloglevel=2, num_threads=1,
    )  # fmt: skip
    options.update(overrides)
    path.mkdir(parents=True, exist_ok=True)
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_prefix=str(path / "tokenizer"), **options)
    return path / "tokenizer.model"


VARIANTS = ["bpe", "unigram", "bpe-dummy-prefix", "unigram-dummy-prefix"]


@pytest.fixture(scope="session")
def docs() -> list[str]:
    return english_docs()


@pytest.fixture(scope="session")
def exported(tmp_path_factory, docs):
    """variant -> (SentencePiece model path, exported HF tokenizer dir), built once per session."""
    root = tmp_path_factory.mktemp("spm")
    built = {}

    def get(variant: str) -> tuple[Path, Path]:
        if variant not in built:
            model_type, _, rest = variant.partition("-")
            if rest:
                model = train_raw_spm(root / variant, docs, model_type=model_type, add_dummy_prefix=True)
            else:
                model = train_spm(docs, root / variant, vocab_size=400, model_type=model_type)
            export_hf_tokenizer(model, root / variant / "hf")
            built[variant] = (model, root / variant / "hf")
        return built[variant]

    return get


# Helpers reach the tests as fixtures: importing `conftest` by name breaks once several test folders have one.
@pytest.fixture(scope="session")
def tricky_texts() -> list[str]:
    return list(TRICKY)


@pytest.fixture(scope="session")
def make_fuzz():
    return fuzz_texts


@pytest.fixture(scope="session")
def make_docs():
    return english_docs


@pytest.fixture(scope="session")
def train_raw():
    return train_raw_spm

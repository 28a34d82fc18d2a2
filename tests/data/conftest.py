"""Fixtures for the data-pipeline tests: tiny trained tokenizers and hand-made token caches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cptlab.data import tokens
from cptlab.data.tokens import DomainTokens

WORDS = (
    "the a cat dog sat on mat runs fast slow model data token train test value return def class 猫 狗 数据 模型".split()
)


def sentences(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(3, 12)))) + f" {i}." for i in range(n)]


def train_tokenizer(out_dir: Path, *, vocab_size: int, seed: int, eos: str | None = "</s>") -> Path:
    """A byte-level BPE tokenizer saved as a Hugging Face tokenizer directory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(sentences(400, seed), trainer)
    kwargs = {"eos_token": eos} if eos else {}
    PreTrainedTokenizerFast(tokenizer_object=tok, **kwargs).save_pretrained(str(out_dir))
    return out_dir


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    return train_tokenizer(tmp_path_factory.mktemp("tok_a"), vocab_size=400, seed=0)


@pytest.fixture(scope="session")
def other_tokenizer_dir(tmp_path_factory) -> Path:
    return train_tokenizer(tmp_path_factory.mktemp("tok_b"), vocab_size=350, seed=1)


@pytest.fixture(scope="session")
def no_eos_tokenizer_dir(tmp_path_factory) -> Path:
    return train_tokenizer(tmp_path_factory.mktemp("tok_no_eos"), vocab_size=300, seed=2, eos=None)


@pytest.fixture
def make_domain(tmp_path):
    """Factory for a DomainTokens whose train array is `offset + arange(n_train)`: every value names its position."""

    def make(
        name: str,
        role: str = "new",
        weight: float = 1.0,
        n_train: int = 1000,
        n_val: int = 200,
    ):
        offset = (1 + len(list(tmp_path.iterdir()))) * 1_000_000  # the first domain made starts at 1_000_000
        directory = tmp_path / name
        directory.mkdir()
        (offset + np.arange(n_train, dtype=np.int64)).astype(np.uint32).tofile(directory / "train.bin")
        (offset + 500_000 + np.arange(n_val, dtype=np.int64)).astype(np.uint32).tofile(directory / "val.bin")
        return DomainTokens(
            name=name,
            role=role,
            weight=weight,
            dir=directory,
            dtype="uint32",
            n_train_tokens=n_train,
            n_val_tokens=n_val,
            n_train_docs=1,
            n_val_docs=1,
            val_bytes=n_val,
            eos_id=0,
            stats={},
        )

    return make


@pytest.fixture
def encoded_docs(monkeypatch) -> list[int]:
    """Documents passed to the encoder in this process, batch by batch."""
    seen: list[int] = []
    real = tokens.encode_documents

    def counting(tok, docs, eos_id, dtype):
        seen.append(len(docs))
        return real(tok, docs, eos_id, dtype)

    monkeypatch.setattr(tokens, "encode_documents", counting)
    return seen

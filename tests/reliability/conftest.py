"""Fixtures for the reliability tests: a tiny corpus, a tiny byte-level BPE tokenizer, and the CLI in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
WORDS = "the a cat dog sat on mat runs fast slow model data token train test value return def class".split()


def sentences(n: int, seed: int, tag: str = "") -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(5, 15)))) + f"{tag} {i}." for i in range(n)]


@pytest.fixture(scope="session")
def bpe_tokenizer_dir(tmp_path_factory) -> Path:
    """A byte-level BPE tokenizer with an EOS token, saved as a Hugging Face tokenizer directory (as tests/data)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    out = tmp_path_factory.mktemp("bpe_tok")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(sentences(400, 0), trainer)
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>").save_pretrained(str(out))
    return out


class Train:
    """`python -m cptlab.train ...` as a user runs it, with its own cache directory and HYDRA_FULL_ERROR unset."""

    def __init__(self, cache_dir: Path):
        self.cache_dir = cache_dir

    def __call__(self, *args: str, timeout: int = 300):
        env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
        env["CPTLAB_CACHE"] = str(self.cache_dir)
        started = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "cptlab.train", *args], cwd=ROOT, capture_output=True,
                              text=True, timeout=timeout, env=env)
        proc.elapsed = time.monotonic() - started
        return proc


@pytest.fixture
def cptlab_train(tmp_path) -> Train:
    """A CLI runner with a fresh, empty cache (so a test can tell whether tokenizers or token caches were built)."""
    return Train(tmp_path / "cache")


@pytest.fixture(scope="session")
def train_cli():
    """The runner class, for module-scoped fixtures: `train_cli(cache_dir)(*overrides)`."""
    return Train

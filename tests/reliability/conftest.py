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
    """`python -m cptlab.cli.train_app ...` as a user runs it, with its own cache directory and HYDRA_FULL_ERROR unset."""

    def __init__(self, cache_dir: Path):
        self.cache_dir = cache_dir

    def __call__(self, *args: str, timeout: int = 300):
        env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
        env["CPTLAB_CACHE"] = str(self.cache_dir)
        started = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "cptlab.cli.train_app", *args], cwd=ROOT, capture_output=True,
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


# A complete run on the user's own files, small enough for a test: random-init tiny Llama, a SentencePiece
# tokenizer trained on the corpus, two steps (what `debug=smoke` did before it kept the experiment's tokenizer).
TINY_RUN = ["model=tiny", "tokenizer=train", "tokenizer.vocab_size=400", "tokenizer.character_coverage=1.0",
            "logger=csv", "data=files", "data.domains.new.heldout=0.2", "data.domains.old.heldout=0.2",
            "data.seq_len=64", "data.batch_size=8", "trainer.max_steps=2", "eval.every_n_steps=2", "eval.max_blocks=4",
            "checkpoint.every_n_steps=2", "optim.warmup_steps=0", "trainer.log_every_n_steps=1"]


def tiny_run(new: Path, old: Path, run_dir: Path, *extra: str) -> list[str]:
    """The overrides of a tiny two-domain run on `new` and `old` into `run_dir`."""
    return [*TINY_RUN, f"data.domains.new.sources=[{new}]", f"data.domains.old.sources=[{old}]", *extra,
            f"hydra.run.dir={run_dir}"]


def write_corpus(path: Path, n: int, seed: int, tag: str = "") -> Path:
    path.write_text("\n".join(sentences(n, seed, tag)) + "\n", encoding="utf-8")
    return path


def error_line(proc, prog: str = "cptlab-train") -> str:
    """The single stderr line of a refused command: non-zero exit, no traceback, one `PROG: error:` line."""
    assert proc.returncode != 0, f"exit 0; stdout: {proc.stdout[-1500:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip() and "warning:" not in line]
    assert len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith(f"{prog}: error:"), lines[0]
    return lines[0]


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under `root` (hidden ones too) with its bytes: to show that nothing was changed."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


class Helpers:
    """The helpers above, for test modules (with --import-mode=importlib a conftest is not importable)."""

    TINY_RUN = TINY_RUN
    tiny_run = staticmethod(tiny_run)
    write_corpus = staticmethod(write_corpus)
    error_line = staticmethod(error_line)
    snapshot = staticmethod(snapshot)


@pytest.fixture(scope="session")
def rel() -> type[Helpers]:
    return Helpers

"""Train and load SentencePiece models: the canonical tokenizer artefact, set up for exact round trips."""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import sentencepiece as spm

from cptlab.errors import CptlabError
from cptlab.utils.io import atomic_write_bytes

MODEL_FILE = "tokenizer.model"
# Unigram training gives different pieces for different thread counts, so "unset" must not mean
# "this machine's core count": a content-keyed cache shared by several machines needs one answer.
DEFAULT_NUM_THREADS = 4
# SentencePiece silently drops lines longer than this (default 4192 bytes), which would lose whole
# paragraphs of web text or CJK; lines longer than ours are rare enough to leave out.
MAX_SENTENCE_BYTES = 1 << 15
# Llama convention: <unk>=0, <s>=1, </s>=2, no pad piece.
SPECIAL_IDS = dict(unk_id=0, bos_id=1, eos_id=2, pad_id=-1)
BYTE_PIECES = 256


def _lines(texts: Iterable[str]) -> Iterator[str]:
    """SentencePiece trains on lines: split documents on newlines and drop empty lines."""
    for doc in texts:
        for line in doc.split("\n"):
            if line:
                yield line


def check_vocab_size(vocab_size: int) -> None:
    """CptlabError unless a byte-fallback model of `vocab_size` pieces can hold more than its fixed pieces."""
    minimum = BYTE_PIECES + 3 + 1  # byte pieces, <unk> <s> </s>, and at least one character
    if vocab_size < minimum:
        raise CptlabError(
            f"tokenizer.vocab_size={vocab_size} is too small: it must hold the {BYTE_PIECES} byte pieces, "
            f"3 special pieces and the corpus characters (at least {minimum})"
        )


def train_spm(
    texts: Iterable[str],
    out_dir: Path,
    *,
    vocab_size: int,
    model_type: str = "bpe",
    character_coverage: float = 0.9995,
    input_sentence_size: int = 2_000_000,
    seed: int = 0,
    num_threads: int | None = None,
) -> Path:
    """Train a lossless byte-fallback SentencePiece model on `texts`; write and return `out_dir/tokenizer.model`.

    `vocab_size` is a soft limit (a corpus too small for it gives a smaller vocabulary), but it must hold
    the 256 byte pieces, the 3 special pieces and every character kept by `character_coverage`.
    `model_type` (tokenizer.model_type, checked by the run; its null is resolved by the caller) goes to
    SentencePiece as given: a name it does not know is its ValueError naming the name, before anything is written.
    """
    check_vocab_size(vocab_size)
    lines = _lines(texts)
    first = next(lines, None)
    if first is None:
        raise CptlabError(f"tokenizer training text for {out_dir} is empty: no non-empty line to train on")

    def sentences() -> Iterator[str]:
        yield first
        yield from lines

    # The sampling of `input_sentence_size` lines from a larger corpus uses this global generator.
    spm.set_random_generator_seed(seed)
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=sentences(),
            model_writer=model,
            model_type=model_type,
            vocab_size=vocab_size,
            # A corpus too small for `vocab_size` then gives a smaller vocabulary instead of failing.
            hard_vocab_limit=False,
            character_coverage=character_coverage,
            input_sentence_size=input_sentence_size,
            max_sentence_length=MAX_SENTENCE_BYTES,
            num_threads=num_threads or DEFAULT_NUM_THREADS,
            # Lossless: no normalisation, every space kept, no dummy prefix (so token bytes sum to
            # text bytes), unknown characters spelled as bytes.
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            add_dummy_prefix=False,
            byte_fallback=True,
            split_digits=True,
            allow_whitespace_only_pieces=True,
            **SPECIAL_IDS,
            unk_piece="<unk>",
            bos_piece="<s>",
            eos_piece="</s>",
            minloglevel=0 if os.environ.get("CPTLAB_VERBOSE") else 2,
        )
    except RuntimeError as err:
        raise _training_error(err, vocab_size, out_dir) from err
    path = Path(out_dir) / MODEL_FILE
    atomic_write_bytes(path, model.getvalue())
    return path


def _training_error(err: RuntimeError, vocab_size: int, out_dir: Path) -> CptlabError:
    """Translate SentencePiece's internal check failures into a message that says what to change."""
    message = str(err)
    needed = re.search(r"smaller than required_chars\. \d+ vs (\d+)", message)
    if needed:
        return CptlabError(
            f"tokenizer.vocab_size={vocab_size} is too small for this corpus: it needs at least {needed.group(1)} "
            "(256 byte pieces, 3 special pieces and the corpus characters); raise tokenizer.vocab_size or "
            "lower tokenizer.character_coverage"
        )
    return CptlabError(f"SentencePiece training for {out_dir} failed: {message.strip()}")


def load_spm(path: str | os.PathLike) -> spm.SentencePieceProcessor:
    """Load a SentencePiece `.model` file; CptlabError naming the path if it is missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise CptlabError(f"SentencePiece model {path} does not exist")
    try:
        return spm.SentencePieceProcessor(model_file=str(path))
    except (OSError, RuntimeError) as err:
        raise CptlabError(f"{path} is not a readable SentencePiece model: {err}") from err

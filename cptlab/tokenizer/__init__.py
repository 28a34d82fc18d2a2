"""Tokenizers: SentencePiece training, exact export to Hugging Face fast tokenizers, byte lengths for bits-per-byte."""

from cptlab.tokenizer.byte_lengths import token_byte_lengths
from cptlab.tokenizer.hf import export_hf_tokenizer, load_tokenizer, verify_export
from cptlab.tokenizer.prepare import prepare_tokenizer
from cptlab.tokenizer.spm import load_spm, train_spm

__all__ = [
    "export_hf_tokenizer",
    "load_spm",
    "load_tokenizer",
    "prepare_tokenizer",
    "token_byte_lengths",
    "train_spm",
    "verify_export",
]

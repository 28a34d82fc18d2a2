"""Tokenizers: SentencePiece training, exact export to Hugging Face fast tokenizers, vocabulary extension for a
new domain, byte lengths for bits-per-byte, and tokenizer reports."""

from cptlab.tokenizer.bpe_extend import extend_bpe
from cptlab.tokenizer.byte_lengths import token_byte_lengths
from cptlab.tokenizer.extend import extend_spm
from cptlab.tokenizer.hf import export_hf_tokenizer, load_tokenizer, verify_export
from cptlab.tokenizer.prepare import extend_tokenizer, extension_stats, prepare_tokenizer
from cptlab.tokenizer.report import tokenizer_report, tokens_per_char
from cptlab.tokenizer.spm import load_spm, train_spm

__all__ = [
    "export_hf_tokenizer",
    "extend_bpe",
    "extend_spm",
    "extend_tokenizer",
    "extension_stats",
    "load_spm",
    "load_tokenizer",
    "prepare_tokenizer",
    "token_byte_lengths",
    "tokenizer_report",
    "tokens_per_char",
    "train_spm",
    "verify_export",
]

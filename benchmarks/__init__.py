"""cptlab's benchmarks: `python -m benchmarks [--quick] [--out FILE]` (`make bench`).

Every headline number is a ratio against a baseline measured in the same invocation (same machine,
same moment, same load), so numbers from a shared or noisy machine still compare:

- training:   cptlab's Lightning path vs a plain `transformers.Trainer` loop (tokens/s), and the
              achieved FLOP/s against a measured fp32 matmul peak ("CPU MFU")
- pretokenize: `prepare_domain` building a token cache vs the tokenizer's own batch encode
- loader:     batches/s of the mixture DataLoader vs training steps/s; resident memory vs corpus size
- tokenizer:  exported HF tokenizer vs SentencePiece encode speed; tokens per character base vs extended
- startup:    a job's start-up to its first training step (cold and warm caches) vs the import floor
- corpus:     pre-tokenizing a generated corpus of gzip shards (default 1 GB, --corpus-bytes): peak RSS growth
              per corpus byte against a corpus a tenth the size, num_proc=2 vs 1, tokens/s

See benchmarks/README.md for what limits each number.
"""

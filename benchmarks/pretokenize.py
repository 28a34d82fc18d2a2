"""2. Pre-tokenization: `prepare_domain` building a token cache vs the tokenizer's own batch encode.

Text: the demo:en domain (train + held-out documents, as a run splits them), tokenizer: the base (an SPM
trained on the demo:en train split, exported to HF). The baseline is one call `tok(texts,
add_special_tokens=False)` on the same documents with the same loaded tokenizer (Rust batch encoding, its
own thread pool). cptlab's number is the whole cache build into a fresh directory: reading the (already
loaded) documents, the split, the cache key (tokenizer directory hash), the encode (in batches of 1000
documents, or in a spawn pool of `num_proc` workers that each load the tokenizer), the EOS separators, the
.bin writes, the content hashes and meta.json. Tokens are counted without the EOS separators on both sides.
Each side's best of `repeats` runs counts.
"""

from __future__ import annotations

import os
import time

from benchmarks.common import EN_HELDOUT, SEED, BenchResult, Context, Ratio


def run(ctx: Context, repeats: int | None = None) -> BenchResult:
    from cptlab.data.tokens import DomainSpec, load_domain_documents, prepare_domain
    from cptlab.tokenizer.hf import load_tokenizer

    s = ctx.sizes
    repeats = repeats or (1 if s.quick else 2)
    res = BenchResult("pretokenize")
    tokenizer_dir = ctx.base_tokenizer_dir
    spec = DomainSpec(name="en", role="new", sources=("demo:en",), heldout=EN_HELDOUT, max_docs=s.pretok_docs)
    train, val, _ = load_domain_documents(spec, seed=SEED)  # also warms the corpus reader's per-process cache
    texts = train + val
    chars = sum(map(len, texts))

    tok = load_tokenizer(tokenizer_dir)
    tok(texts[:50], add_special_tokens=False)  # first-call set-up out of the timing
    base_s, n_tokens = float("inf"), 0
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        ids = tok(texts, add_special_tokens=False)["input_ids"]
        base_s = min(base_s, time.perf_counter() - t0)
        n_tokens = sum(map(len, ids))
        del ids
    base_tps = n_tokens / base_s
    # for the diagnosis: the Rust encoder without transformers' wrapper and offsets, and SentencePiece itself
    from cptlab.tokenizer.spm import load_spm

    backend, sp = tok.backend_tokenizer, load_spm(tokenizer_dir / "tokenizer.model")
    alt = {}
    for label, fn in (
        ("tokenizers_encode_batch_fast", lambda: backend.encode_batch_fast(texts, add_special_tokens=False)),
        ("sentencepiece_encode", lambda: sp.encode(texts, num_threads=s.threads)),
    ):
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
        alt[label] = n_tokens / best

    per_proc = {}
    for num_proc in s.pretok_procs:
        best, meta = float("inf"), None
        for r in range(repeats):
            cache = ctx.path("pretok", f"np{num_proc}-{r}")  # fresh: always a build, never a cache hit
            t0 = time.perf_counter()
            dom = prepare_domain(spec, tokenizer_dir, cache, seed=SEED, num_proc=num_proc)
            best = min(best, time.perf_counter() - t0)
            meta = dom
        text_tokens = meta.n_train_tokens + meta.n_val_tokens - meta.n_train_docs - meta.n_val_docs
        if text_tokens != n_tokens:
            raise RuntimeError(f"prepare_domain wrote {text_tokens} text tokens, the batch encode gave {n_tokens}")
        per_proc[num_proc] = {"seconds": best, "tokens_per_s": text_tokens / best}
        res.ratios.append(Ratio(
            f"pretokenize.num_proc{num_proc}_vs_batch_encode", (text_tokens / best) / base_tps,
            f"prepare_domain num_proc={num_proc} {text_tokens / best:,.0f} tok/s",
            f"tok(texts) {base_tps:,.0f} tok/s", ">= 0.8"))
    res.details = {
        "docs": len(texts), "chars": chars, "tokens": n_tokens, "baseline_seconds": base_s,
        "baseline_tokens_per_s": base_tps, "prepare_domain": per_proc, "repeats": repeats,
        "other_encoders_tokens_per_s": alt,
        "TOKENIZERS_PARALLELISM": os.environ.get("TOKENIZERS_PARALLELISM", "(unset: Rust thread pool on)"),
        "cpu_count": os.cpu_count(),
    }
    return res

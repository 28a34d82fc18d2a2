"""4. Tokenizers: encode speed of the exported HF tokenizer vs SentencePiece, and tokens per character of the
base vs the extended tokenizer on held-out English and Chinese.

Base: a byte-fallback BPE SentencePiece model (vocab 4096) trained with `train_spm` on the demo:en train split,
exported with `export_hf_tokenizer`. Extended: `prepare_tokenizer(kind="extend")` of that model with a 4000-piece
vocabulary trained on the demo:zh train split. Held-out text: the held-out split of each corpus (as a run
splits it), never seen by either tokenizer's training.

Encode speed: characters/s of one batch call on the leading train documents of the corpus (about
`encode_chars` characters, so that one call takes a measurable time), `tok(texts, add_special_tokens=False)`
(transformers over the Rust tokenizer, its own thread pool) vs `SentencePieceProcessor.encode(texts,
num_threads=threads)`, best of `repeats`; both produce the same ids (checked). For the diagnosis, the raw
`tokenizers` calls under transformers' wrapper are timed too (`encode_batch`, and `encode_batch_fast`, which
skips the character offsets).
"""

from __future__ import annotations

import time

from benchmarks.common import BenchResult, Context, Ratio


def _best(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _leading(docs: list[str], chars: int) -> list[str]:
    out, total = [], 0
    for doc in docs:
        if total >= chars:
            break
        out.append(doc)
        total += len(doc)
    return out


def run(ctx: Context) -> BenchResult:
    from cptlab.tokenizer.hf import load_tokenizer
    from cptlab.tokenizer.report import tokens_per_char
    from cptlab.tokenizer.spm import load_spm

    s = ctx.sizes
    repeats = 2 if s.quick else 5
    res = BenchResult("tokenizer")
    dirs = {"base": ctx.base_tokenizer_dir, "extended": ctx.ext_tokenizer_dir}
    hf = {k: load_tokenizer(d) for k, d in dirs.items()}
    sp = {k: load_spm(d / "tokenizer.model") for k, d in dirs.items()}
    held_out = {"en": ctx.en_split[1], "zh": ctx.zh_split[1]}

    table = {lang: {kind: tokens_per_char(hf[kind], texts) for kind in dirs} for lang, texts in held_out.items()}
    speed = {}
    corpus = {"en": ctx.en_split[0], "zh": ctx.zh_split[0]}
    for lang, kind in (("en", "base"), ("zh", "extended")):
        texts = _leading(corpus[lang], s.encode_chars)
        chars = sum(map(len, texts))
        hf_ids = hf[kind](texts, add_special_tokens=False)["input_ids"]
        sp_ids = sp[kind].encode(texts, num_threads=s.threads)
        if hf_ids != sp_ids:
            raise RuntimeError(f"the exported {kind} tokenizer does not reproduce SentencePiece's ids on {lang}")
        backend = hf[kind].backend_tokenizer
        # each lambda is timed at once, inside this iteration: the loop variables are the ones meant
        hf_s = _best(lambda: hf[kind](texts, add_special_tokens=False), repeats)  # noqa: B023
        sp_s = _best(lambda: sp[kind].encode(texts, num_threads=s.threads), repeats)  # noqa: B023
        raw_s = _best(lambda: backend.encode_batch(texts, add_special_tokens=False), repeats)  # noqa: B023
        fast_s = _best(lambda: backend.encode_batch_fast(texts, add_special_tokens=False), repeats)  # noqa: B023
        speed[lang] = {"tokenizer": kind, "docs": len(texts), "chars": chars, "tokens": sum(map(len, hf_ids)),
                       "hf_chars_per_s": chars / hf_s, "spm_chars_per_s": chars / sp_s,
                       "tokenizers_encode_batch_chars_per_s": chars / raw_s,
                       "tokenizers_encode_batch_fast_chars_per_s": chars / fast_s}
        res.ratios.append(Ratio(
            f"tokenizer.hf_vs_spm_encode_{lang}", sp_s / hf_s,
            f"HF {kind} {chars / hf_s / 1e6:,.2f} Mchar/s", f"SentencePiece {chars / sp_s / 1e6:,.2f} Mchar/s"))
    res.ratios.append(Ratio(
        "tokenizer.zh_tokens_per_char_extended_vs_base", table["zh"]["extended"] / table["zh"]["base"],
        f"extended {table['zh']['extended']:.3f} tok/char", f"base {table['zh']['base']:.3f} tok/char"))
    res.ratios.append(Ratio(
        "tokenizer.en_tokens_per_char_extended_vs_base", table["en"]["extended"] / table["en"]["base"],
        f"extended {table['en']['extended']:.4f} tok/char", f"base {table['en']['base']:.4f} tok/char",
        note="1.0 unless held-out English quotes characters the base spells in bytes"))
    res.details = {"tokens_per_char": table, "encode": speed,
                   "vocab": {k: len(t) for k, t in hf.items()},
                   "held_out_docs": {k: len(v) for k, v in held_out.items()},
                   "build_seconds": {k: ctx.measured.get(k) for k in ("base_spm_train_s", "extend_s")}}
    return res

"""The real-tokenizer matrix (issue #24): vocabulary extension on the tokenizers users bring.

llama.cpp keeps vocab-only GGUF files of about 19 real tokenizers (LLaMA-2, Phi-3, Baichuan, LLaMA-3, Qwen2, GPT-2,
StarCoder, DeepSeek, Falcon, GPT-NeoX, Command-R, Gemma, BERT, ...) in `vendor/llama.cpp/models/`, with the ids the
real (Hugging Face) tokenizer gives for ~46 test texts beside each (`.inp` / `.out`). They ship inside the
llama-cpp-python sdist on PyPI (~77 MB; no C++ build: cptlab reads the GGUFs itself, cptlab.tokenizer.gguf).

    python -m benchmarks.real_vocabs fetch     # once: the GGUFs into $CPTLAB_CACHE/real_vocabs (make install-real)
    python -m benchmarks.real_vocabs matrix    # every base extended, the table into $CPTLAB_CACHE/real_matrix.md
    make test-real                             # the same matrix as tests (tests/tokenizer/test_real_matrix.py)

Per base, the same recipe: the GGUF's vocabulary rebuilt (SentencePiece model or byte-level tokenizer.json) and
checked against llama.cpp's reference ids, then `tokenizer=extend` with 8,000 Chinese pieces (`add_pieces`, the
default `admit=auto`, English demo text as the base-language sample) trained on 2 MB of the Chinese demo corpus,
measured on held-out text: Chinese tokens per character before and after, English lines and code files whose ids
change, HF ids against SentencePiece ids, decode(encode(x)) == x, wall time. A base that cannot be extended
(WordPiece) or already speaks Chinese gets its one-line reason instead.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

LLAMA_CPP_PYTHON = "0.3.36"  # the sdist the vocabularies come from (newer ones may hold other files)
MEMBERS = "/vendor/llama.cpp/models/ggml-vocab-"
FETCHED = ".fetched.json"
ADD_PIECES = 8000
ZH_HELDOUT_DOCS, ZH_TRAIN_BYTES = 500, 2_000_000
EN_HELDOUT_LINES, CODE_HELDOUT_FILES = 3000, 48
# The names the table shows for llama.cpp's file names.
NAMES = {"llama-spm": "LLaMA-2", "llama-bpe": "LLaMA-3", "gpt-2": "GPT-2", "phi-3": "Phi-3", "qwen2": "Qwen2",
         "qwen35": "Qwen3.5", "gemma-4": "Gemma-4", "bert-bge": "BERT (bge)",
         "nomic-bert-moe": "nomic-bert-moe (XLM-R)",
         "command-r": "Command-R", "deepseek-coder": "DeepSeek-Coder", "deepseek-llm": "DeepSeek-LLM",
         "falcon": "Falcon", "gpt-neox": "GPT-NeoX", "mpt": "MPT", "refact": "Refact", "starcoder": "StarCoder",
         "baichuan": "Baichuan", "aquila": "Aquila"}  # fmt: skip


def cache_root() -> Path:
    return Path(os.environ.get("CPTLAB_CACHE", Path.home() / ".cache" / "cptlab")).expanduser()


def vocab_dir() -> Path:
    """Where the GGUFs are: $CPTLAB_REAL_VOCABS, else $CPTLAB_CACHE/real_vocabs (~/.cache/cptlab/real_vocabs)."""
    return Path(os.environ.get("CPTLAB_REAL_VOCABS") or cache_root() / "real_vocabs").expanduser()


def available(directory: Path | None = None) -> list[Path]:
    directory = directory or vocab_dir()
    return sorted(directory.glob("ggml-vocab-*.gguf")) if (directory / FETCHED).is_file() else []


def name_of(path: Path) -> str:
    return path.name.removeprefix("ggml-vocab-").removesuffix(".gguf")


def fetch(dest: Path | None = None) -> Path:
    """Download the llama-cpp-python sdist once with pip and keep its vocab files (GGUF + reference ids) in
    `dest`; a no-op when they are there."""
    dest = dest or vocab_dir()
    if (dest / FETCHED).is_file():
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="cptlab-llama-cpp-sdist-") as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                        f"llama-cpp-python=={LLAMA_CPP_PYTHON}", "-d", tmp], check=True)  # fmt: skip
        [sdist] = Path(tmp).glob("llama_cpp_python-*.tar.gz")
        names = []
        with tarfile.open(sdist) as archive:
            for member in archive.getmembers():
                if MEMBERS in member.name and member.isfile():
                    name = Path(member.name).name  # the base name only: nothing lands outside `dest`
                    with archive.extractfile(member) as src, (dest / name).open("wb") as out:
                        shutil.copyfileobj(src, out)
                    names.append(name)
    (dest / FETCHED).write_text(json.dumps({"llama-cpp-python": LLAMA_CPP_PYTHON, "files": sorted(names)}, indent=2))
    return dest


def reference(path: Path) -> list[tuple[str, list[int]]]:
    """llama.cpp's test texts for a vocabulary and the ids its real tokenizer gives them ([] if none)."""
    inp, out = Path(f"{path}.inp"), Path(f"{path}.out")
    if not (inp.is_file() and out.is_file()):
        return []
    texts = inp.read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")[:-1]
    ids = [[int(i) for i in line.split()] for line in out.read_text(encoding="utf-8").split("\n")[:-1]]
    return list(zip(texts, ids))


@dataclass
class Corpora:
    """The same text for every base: Chinese to train on and to measure, the English sample admit=auto protects,
    and held-out English lines and code files that must keep their segmentation."""

    zh_train: list[str]
    zh_heldout: list[str]
    en_sample: list[str]
    en_heldout: list[str]
    code_heldout: list[str]


def corpora() -> Corpora:
    from cptlab.data.demo import demo_documents

    zh = list(demo_documents("zh"))
    random.Random(0).shuffle(zh)  # news and reviews mixed, so held-out Chinese is like the training text
    train, size = [], 0
    for doc in zh[ZH_HELDOUT_DOCS:]:
        if size >= ZH_TRAIN_BYTES:
            break
        train.append(doc)
        size += len(doc.encode("utf-8"))
    english = list(demo_documents("en"))
    lines, cut = [], len(english)
    while len(lines) < EN_HELDOUT_LINES:  # whole documents from the end, split into their lines
        cut -= 1
        lines[:0] = [line for line in english[cut].split("\n") if line.strip()]
    code = list(demo_documents("code"))
    return Corpora(train, zh[:ZH_HELDOUT_DOCS], english[:cut], lines, code[-CODE_HELDOUT_FILES:])


def measure(path: Path, corp: Corpora, work: Path, add_pieces: int = ADD_PIECES) -> dict:
    """Rebuild, check against the reference ids, extend and measure one GGUF vocabulary: the row of the table."""
    from cptlab.errors import CptlabError
    from cptlab.tokenizer.gguf import read_vocab, rebuild
    from cptlab.tokenizer.hf import load_tokenizer
    from cptlab.tokenizer.prepare import extend_tokenizer

    name = name_of(path)
    row: dict = {"name": name, "base": NAMES.get(name, name)}
    try:
        vocab = read_vocab(path)
        row.update(model=vocab.model, pre=vocab.pre, vocab=len(vocab.tokens))
        start = time.perf_counter()
        row["kind"] = rebuild(path, work / name / "base")
        row["rebuild_s"] = round(time.perf_counter() - start, 2)
    except CptlabError as err:
        row["reason"] = _short(err, path)
        return row
    base_dir, out_dir = work / name / "base", work / name / "extended"
    base = load_tokenizer(base_dir).backend_tokenizer
    row["base_scripts"] = _scripts(vocab, row["kind"])
    refs = reference(path)
    if refs:
        got = base.encode_batch([text for text, _ in refs], add_special_tokens=False)
        row["reference"] = [sum(g.ids == ids for g, (_, ids) in zip(got, refs)), len(refs)]
    start = time.perf_counter()
    try:
        info = extend_tokenizer(base_dir, out_dir, texts=lambda: corp.zh_train, base_texts=lambda: corp.en_sample,
                                add_pieces=add_pieces, vocab_size=None)  # fmt: skip
    except CptlabError as err:
        row["reason"] = _short(err, base_dir)
        row["extend_s"] = round(time.perf_counter() - start, 2)  # how long it took to find out
        return row
    row["extend_s"] = round(time.perf_counter() - start, 2)
    stats = info["extension"]
    row["stats"] = stats
    row.update(added=stats["added"], skipped={k.removeprefix("skipped_"): v for k, v in stats.items()
                                              if k.startswith("skipped_") and v})  # fmt: skip
    extended = load_tokenizer(out_dir).backend_tokenizer
    texts = {"zh": corp.zh_heldout, "en": corp.en_heldout, "code": corp.code_heldout}
    ids = {(side, key): [e.ids for e in tok.encode_batch(docs, add_special_tokens=False)]
           for side, tok in (("base", base), ("extended", extended)) for key, docs in texts.items()}  # fmt: skip
    chars = sum(map(len, corp.zh_heldout))
    row["zh_before"] = round(sum(map(len, ids["base", "zh"])) / chars, 4)
    row["zh_after"] = round(sum(map(len, ids["extended", "zh"])) / chars, 4)
    row["en_changed"] = [sum(a != b for a, b in zip(ids["base", "en"], ids["extended", "en"])), len(corp.en_heldout)]
    row["code_changed"] = [sum(a != b for a, b in zip(ids["base", "code"], ids["extended", "code"])),
                           len(corp.code_heldout)]  # fmt: skip
    every = [doc for docs in texts.values() for doc in docs]
    every_ids = [i for key in texts for i in ids["extended", key]]
    decoded = extended.decode_batch(every_ids, skip_special_tokens=False)
    row["round_trip_failures"] = [sum(d != t for d, t in zip(decoded, every)), len(every)]
    if row["kind"] == "spm":
        from cptlab.tokenizer.spm import load_spm

        sp = load_spm(out_dir / "tokenizer.model")
        spm_ids = sp.encode(every)
        differ = [(a, b) for a, b in zip(every_ids, spm_ids) if a != b]
        # Unigram: an equally scored segmentation of the same text is as good (cptlab.tokenizer.hf.verify_export).
        ties = sum(1 for a, b in differ if row["model"] == "t5" and _equal_score(sp, a, b))
        row["hf_vs_spm_mismatches"] = [len(differ) - ties, len(every)]
        row["hf_vs_spm_ties"] = ties
    return row


def _scripts(vocab, kind: str) -> list[str]:
    """The scripts the base speaks by cptlab's rule (cptlab.tokenizer.scripts.base_scripts: those dominating its
    multi-character pieces): a base speaking CJK has no Chinese to learn."""
    from cptlab.tokenizer.bpe_extend import decoded_tokens
    from cptlab.tokenizer.gguf import NORMAL
    from cptlab.tokenizer.scripts import base_scripts

    pieces = [t for t, k in zip(vocab.tokens, vocab.types) if k == NORMAL]
    return sorted(base_scripts(decoded_tokens(pieces) if kind == "bpe" else pieces))


def _equal_score(sp, a: list[int], b: list[int]) -> bool:
    """Two segmentations of the same text with the same total score (a Viterbi tie)."""
    score_a, score_b = sum(map(sp.get_score, a)), sum(map(sp.get_score, b))
    return sp.decode(a) == sp.decode(b) and math.isclose(score_a, score_b, rel_tol=1e-5, abs_tol=1e-4)


def _short(err: Exception, path: Path) -> str:
    return str(err).replace(str(path.parent) + "/", "")


def _ratio(pair) -> str:
    return f"{pair[0]:,} / {pair[1]:,}"


def markdown(rows: list[dict], corp: Corpora | None = None) -> str:
    """The table (one row per base, in the order given)."""
    head = ("| base | GGUF model / pre | vocab | rebuild = real ids | added | skipped (reason: pieces) "
            "| zh tokens/char before → after | English lines changed | code files changed | HF ids = SPM ids "
            "| round trip fails | seconds (rebuild + extend) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for row in rows:
        what = f"{row.get('model', '?')} / {row.get('pre') or '-'}"
        vocab = f"{row['vocab']:,}" if "vocab" in row else "-"
        ref = _ratio(row["reference"]) if "reference" in row else "no reference"
        if "reason" in row:
            seconds = f"{row.get('rebuild_s', 0):.1f} + {row['extend_s']:.1f}" if "extend_s" in row else "-"
            lines.append(f"| {row['base']} | {what} | {vocab} | {ref if 'kind' in row else '-'} | "
                         f"{row['reason']} |" + " |" * 6 + f" {seconds} |")  # fmt: skip
            continue
        skipped = ", ".join(f"{k} {v:,}" for k, v in row["skipped"].items())
        gain = row["zh_before"] / row["zh_after"]
        spm = _ratio(row["hf_vs_spm_mismatches"]) + " differ" if "hf_vs_spm_mismatches" in row else "n/a (byte-level)"
        if row.get("hf_vs_spm_ties"):
            spm += f" (+{row['hf_vs_spm_ties']} equal-score ties)"
        lines.append(
            f"| {row['base']} | {what} | {vocab} | {ref} | {row['added']:,} | {skipped} | {row['zh_before']:.3f} → "
            f"{row['zh_after']:.3f} ({gain:.2f}x) | {_ratio(row['en_changed'])} | {_ratio(row['code_changed'])} | "
            f"{spm} | {_ratio(row['round_trip_failures'])} | {row['rebuild_s']:.1f} + {row['extend_s']:.1f} |"
        )
    if corp is not None:
        lines.append("")
        lines.append(f"Corpora: {len(corp.zh_train):,} Chinese documents ({ZH_TRAIN_BYTES / 1e6:.0f} MB) to train "
                     f"on, {len(corp.zh_heldout):,} held out; {len(corp.en_sample):,} English documents as the "
                     f"base-language sample; held out: {len(corp.en_heldout):,} English lines, "
                     f"{len(corp.code_heldout)} code files.")
    return "\n".join(lines) + "\n"


def write_table(rows: list[dict], corp: Corpora | None, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(markdown(rows, corp), encoding="utf-8")
    out.with_suffix(".json").write_text(json.dumps(rows, indent=2, default=str), encoding="utf-8")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.real_vocabs", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("fetch", help=f"download llama-cpp-python=={LLAMA_CPP_PYTHON}'s vocab files once")
    matrix = commands.add_parser("matrix", help="extend every base and write the table")
    matrix.add_argument("--only", default="", help="comma-separated names (llama-spm,gpt-2,...)")
    matrix.add_argument("--out", type=Path, default=None, help="markdown file (default $CPTLAB_CACHE/real_matrix.md)")
    matrix.add_argument("--workdir", type=Path, default=None, help="keep the tokenizers here (default: a temp dir)")
    args = parser.parse_args(argv)
    if args.command == "fetch":
        print(fetch())
        return 0
    paths = [p for p in available() if not args.only or name_of(p) in args.only.split(",")]
    if not paths:
        print(f"no vocabularies in {vocab_dir()}: run `python -m benchmarks.real_vocabs fetch` first", file=sys.stderr)
        return 2
    corp = corpora()
    rows = []
    with tempfile.TemporaryDirectory(prefix="cptlab-real-vocabs-") as tmp:
        work = args.workdir or Path(tmp)
        for path in paths:
            rows.append(measure(path, corp, work))
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "stats"}), flush=True)
    out = write_table(rows, corp, args.out or cache_root() / "real_matrix.md")
    print(markdown(rows, corp))
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

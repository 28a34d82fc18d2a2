"""`cptlab-tokenizer`: extend a base tokenizer for a new domain, and compare tokenizers on text files."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cptlab.config import ADMIT_RULES, MODEL_TYPES, check_value
from cptlab.errors import CptlabError

PROG = "cptlab-tokenizer"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        # One line, like every other error, instead of argparse's usage block.
        raise CptlabError(f"{message} ({self.prog} --help lists the options)")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    extend = commands.add_parser("extend", help="add new-domain pieces to a base tokenizer (ids of the base kept)")
    extend.add_argument("--base", required=True, type=Path,
                        help="SentencePiece .model, a directory with tokenizer.model, a byte-level BPE directory, "
                             "or a .gguf file (its vocabulary)")
    extend.add_argument("--corpus", required=True, nargs="+", help="new-domain text files (.txt: a document a line)")
    size = extend.add_mutually_exclusive_group(required=True)
    size.add_argument("--add-pieces", type=int, help="append exactly this many new pieces")
    size.add_argument("--vocab-size", type=int, help="size of the vocabulary trained on the corpus (every admitted "
                                                     "piece of it is appended)")
    extend.add_argument("--admit", choices=ADMIT_RULES, default="auto",
                        help="which new pieces are appended (default auto; see conf/tokenizer/extend.yaml)")
    extend.add_argument("--out", required=True, type=Path,
                        help="output tokenizer directory (absent, empty, or an earlier output of this command)")
    extend.add_argument("--model-type", choices=MODEL_TYPES, default=None,
                        help="SentencePiece model type of the domain vocabulary (default: the base's)")
    extend.add_argument("--character-coverage", type=float, default=0.9995)
    extend.add_argument("--seed", type=int, default=0)
    extend.add_argument("--check-text", nargs="+", default=[],
                        help="base-language files that must segment exactly as with the base")

    report = commands.add_parser("report", help="tokens/char, byte-fallback share and speed of tokenizers on texts")
    report.add_argument("--tokenizer", required=True, nargs="+", type=Path, help="HF tokenizer directories")
    report.add_argument("--text", required=True, nargs="+", help="text files (.txt: a document a line)")
    report.add_argument("--json", action="store_true", help="print JSON to stdout instead of a table")
    return parser


def read_texts(paths: list[str]) -> list[str]:
    from cptlab.data.sources import read_documents

    return [doc for path in paths for doc in read_documents(str(path))]


def _extend(args) -> None:
    from cptlab.tokenizer.hf import load_tokenizer
    from cptlab.tokenizer.prepare import extend_tokenizer, extension_base
    from cptlab.tokenizer.report import extension_lines, tokens_per_char
    from cptlab.tokenizer.spm import load_spm
    from cptlab.utils.io import check_replaceable, replace_dir

    # Before any work: only an earlier output is replaced, and never the base or a text it reads (--out equal
    # to --base would overwrite the base, and its "before" figures would be the new tokenizer's).
    inputs = [("--base", args.base), *(("--corpus", c) for c in args.corpus), *(("--check-text", c) for c in args.check_text)]
    check_replaceable(args.out, "tokenizer", "--out", inputs=inputs)
    # SentencePiece refuses a coverage only after the corpus is read: tokenizer.character_coverage's rule first.
    check_value("tokenizer.character_coverage", args.character_coverage)
    corpus = read_texts(args.corpus)
    check = read_texts(args.check_text) if args.check_text else None
    # No cache: the output directory is the artefact asked for (prepare_tokenizer caches the same build).
    built = {}

    def build(tmp: Path) -> None:
        built.update(extend_tokenizer(
            args.base, tmp, texts=lambda: corpus, base_texts=(lambda: check) if check else None,
            vocab_size=args.vocab_size, add_pieces=args.add_pieces, admit=args.admit, model_type=args.model_type,
            character_coverage=args.character_coverage, seed=args.seed,
        ))  # fmt: skip

    # Built beside --out and swapped in; what a killed extend left there (.OUT.*.tmp, .OUT.lock) is removed first.
    replace_dir(args.out, build, kind="tokenizer", what="--out", prog=PROG)
    kind, base, _ = extension_base(args.base)
    before = load_spm(base) if kind == "spm" else load_tokenizer(base)
    after = load_tokenizer(args.out)
    first, *rest = extension_lines(built["extension"])
    print(f"{args.out}: {first}")
    for line in rest:
        print(line)
    rows = [("corpus", corpus)] + ([("check text", check)] if check else [])
    for name, texts in rows:
        print(f"tokens per character on the {name}: {tokens_per_char(before, texts):.4f} before, "
              f"{tokens_per_char(after, texts):.4f} after")


def _report(args) -> None:
    from cptlab.tokenizer.prepare import extension_stats
    from cptlab.tokenizer.report import extension_lines, tokenizer_report

    texts = {path: read_texts([path]) for path in args.text}
    extensions = {tokenizer: extension_stats(tokenizer) for tokenizer in args.tokenizer}
    rows = [
        {"tokenizer": str(tokenizer), "text": path, **tokenizer_report(tokenizer, docs),
         "extension": extensions[tokenizer]}
        for tokenizer in args.tokenizer
        for path, docs in texts.items()
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    for tokenizer, stats in extensions.items():
        if stats:
            print(f"{tokenizer}: built by extend: " + "\n  ".join(extension_lines(stats)))
    from rich.console import Console
    from rich.table import Table

    table = Table("tokenizer", "text", "tokens/char", "byte-fallback share", "encode tokens/s", "tokens")
    for row in rows:
        table.add_row(
            row["tokenizer"], row["text"], f"{row['tokens_per_char']:.4f}", f"{row['byte_fallback_share']:.2%}",
            f"{row['encode_tokens_per_sec']:,.0f}", f"{row['n_tokens']:,}",
        )
    Console(width=200).print(table)


def main(argv: list[str] | None = None) -> None:
    try:
        args = _parser().parse_args(argv)
        (_extend if args.command == "extend" else _report)(args)
    except (CptlabError, OSError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()

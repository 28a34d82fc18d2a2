"""The `cptlab-export` console script: arguments, one-line errors, exit codes (cptlab.run.export does the work)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cptlab.cli import exit_with_error
from cptlab.errors import CptlabError
from cptlab.run.export import WEIGHTS, check_finished, export_run


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="cptlab-export", description="Export a cptlab run as a Hugging Face model "
                                     "directory (adapters merged) with its tokenizer.")
    parser.add_argument("run_dir", type=Path, help="the run directory (the one holding .hydra/ and checkpoints/)")
    parser.add_argument("--out", type=Path, required=True, help="the directory to write")
    parser.add_argument("--adapter-only", action="store_true",
                        help="write the peft adapter (load with PeftModel.from_pretrained on the extended base)")
    parser.add_argument("--weights", choices=WEIGHTS, default="raw", help="trained weights (raw) or the EMA copy")
    parser.add_argument("--allow-incomplete", action="store_true",
                        help="export a run that did not complete (failed, interrupted): its last checkpoint")
    args = parser.parse_args(argv)
    try:
        if not args.run_dir.is_dir():  # before the heavy imports
            raise CptlabError(f"run directory not found: {args.run_dir}")
        warning = check_finished(args.run_dir, allow_incomplete=args.allow_incomplete)
        from cptlab.utils.console import quiet_libraries

        quiet_libraries()
        out = export_run(args.run_dir, args.out, adapter_only=args.adapter_only, weights=args.weights)
    except CptlabError as err:
        exit_with_error("cptlab-export", err, str(err), 2)
    kind = "adapter" if args.adapter_only else "model"
    print(f"cptlab-export: wrote the {kind} of {args.run_dir} to {out}")
    if warning:  # said once it worked: a refusal stays one line
        print(f"cptlab-export: warning: {warning}", file=sys.stderr)


if __name__ == "__main__":
    main()

"""The `cptlab-merge` console script: arguments, one-line errors, exit codes (cptlab.run.merge does the work)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cptlab.cli import exit_with_error
from cptlab.errors import CptlabError
from cptlab.run.merge import DEFAULT_ALPHAS, export_merge, merge_files, merge_run, parse_alphas


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="cptlab-merge", description="Interpolate between a run's starting and "
                                     "trained weights: score each point per domain, or export one.")
    parser.add_argument("run_dir", type=Path, help="the run directory (the one holding .hydra/ and checkpoints/)")
    parser.add_argument("--alpha", default=DEFAULT_ALPHAS,
                        help=f"comma-separated interpolation weights, 0 = the start, 1 = trained (default {DEFAULT_ALPHAS})")
    parser.add_argument("--ema", action="store_true", help="interpolate towards the EMA weights (retention=ema)")
    parser.add_argument("--out", type=Path, help="export theta(alpha) (one --alpha) to this directory instead")
    parser.add_argument("--allow-incomplete", action="store_true",
                        help="use a run that did not complete (failed, interrupted): its last checkpoint")
    args = parser.parse_args(argv)
    weights = "ema" if args.ema else "raw"
    try:
        if not args.run_dir.is_dir():  # before the heavy imports
            raise CptlabError(f"run directory not found: {args.run_dir}")
        alphas = parse_alphas(args.alpha)
        if args.out is not None and len(alphas) != 1:
            raise CptlabError(f"--out exports one model: give one --alpha (got {args.alpha})")
        from cptlab.run.export import check_finished

        warning = check_finished(args.run_dir, allow_incomplete=args.allow_incomplete)
        from cptlab.utils.console import quiet_libraries

        quiet_libraries()
        if args.out is not None:
            out = export_merge(args.run_dir, alphas[0], args.out, weights=weights)
            print(f"cptlab-merge: wrote theta({alphas[0]:g}) of {args.run_dir} to {out}")
            if warning:  # said once it worked: a refusal stays one line
                print(f"cptlab-merge: warning: {warning}", file=sys.stderr)
            return
        record = merge_run(args.run_dir, alphas, weights=weights)
    except CptlabError as err:
        exit_with_error("cptlab-merge", err, str(err), 2)
    domains = sorted(record["roles"])
    print("alpha  " + "  ".join(f"{d + ' bpb':>10}" for d in domains) + "  forgetting    learning")
    for p in record["points"]:
        cells = "  ".join(f"{p['bpb'][d]:>10.4f}" for d in domains)
        f = "" if p["forgetting"] is None else f"{p['forgetting']:+.4f}"
        lr = "" if p["learning"] is None else f"{p['learning']:+.4f}"
        print(f"{p['alpha']:<5g}  {cells}  {f:>10}  {lr:>10}")
    json_path, csv_path, png_path = merge_files(args.run_dir, weights)
    print(f"cptlab-merge: wrote {json_path}, {csv_path}" + (f", {png_path}" if png_path.is_file() else ""))
    if warning:
        print(f"cptlab-merge: warning: {warning}", file=sys.stderr)


if __name__ == "__main__":
    main()

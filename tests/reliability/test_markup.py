"""Run names and overrides are printed as text: `data.domains.zh.sources=[/path/x.jsonl]` (rich would read
`[/path/x.jsonl]` as a closing markup tag and crash) appears verbatim in cptlab-compare's table and in the
end-of-run table."""

from __future__ import annotations

import csv
import io
import json

import yaml
from rich.console import Console

BRACKETED = "data.domains.zh.sources=[/data/corpus/x.jsonl]"


def fabricated_run(run_dir, overrides, zh_end: float):
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    config = {"name": "[bold]demo[/bold]", "seed": 0, "data": {"domains": {
        "zh": {"role": "new", "sources": ["/data/corpus/x.jsonl"], "heldout": 0.02},
        "en": {"role": "replay", "sources": ["demo:en"], "heldout": 0.02}}}}
    (run_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    with open(run_dir / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["step", "trainer/tokens_seen", "val/zh/bpb", "val/en/bpb"])
        writer.writeheader()
        writer.writerow({"step": 0, "trainer/tokens_seen": 0, "val/zh/bpb": 3.0, "val/en/bpb": 1.5})
        writer.writerow({"step": 10, "trainer/tokens_seen": 1000, "val/zh/bpb": zh_end, "val/en/bpb": 1.6})
    summary = {"status": "completed", "error": None, "name": "[bold]demo[/bold]", "overrides": overrides, "steps": 10,
               "final": {"val/zh/bpb": zh_end, "val/en/bpb": 1.6}, "step0": {"val/zh/bpb": 3.0, "val/en/bpb": 1.5},
               "domains": {"zh": {"role": "new", "bpb_start": 3.0, "bpb_end": zh_end, "delta_bpb": zh_end - 3.0},
                           "en": {"role": "replay", "bpb_start": 1.5, "bpb_end": 1.6, "delta_bpb": 0.1}},
               "throughput": {"tokens_per_sec": 100.0}, "wall_time_s": 1.0,
               "paths": {"run_dir": str(run_dir), "metrics": str(run_dir / "metrics.csv")}}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    return summary


def test_compare_prints_bracketed_overrides_verbatim(tmp_path):
    from cptlab.cli.compare import compare

    sweep = tmp_path / "sweep"
    for i, name in enumerate(("x", "y")):  # the runs differ in a bracketed override: it labels their rows
        fabricated_run(sweep / str(i), [f"data.domains.zh.sources=[/data/corpus/{name}.jsonl]"], 2.0 + i / 10)
    console = Console(file=io.StringIO(), width=400)
    written = compare([sweep], out=tmp_path / "out", console=console)
    printed = console.file.getvalue()
    assert "[/data/corpus/x.jsonl]" in printed and "[/data/corpus/y.jsonl]" in printed, printed
    assert written["summary.md"].is_file()


def test_end_of_run_table_prints_names_and_paths_verbatim(tmp_path):
    from cptlab.rundir.summary import render_table

    run_dir = tmp_path / "[x]" / "run"
    summary = fabricated_run(run_dir, [BRACKETED], 2.0)
    summary["paths"]["run_dir"] = "/runs/[/data/corpus/x.jsonl]"
    console = Console(file=io.StringIO(), width=200)
    render_table(summary, console)
    printed = console.file.getvalue()
    assert "[bold]demo[/bold]" in printed and "/runs/[/data/corpus/x.jsonl]" in printed

"""`cptlab-compare --archive` keeps each run's record beside the comparison, and `python -m experiments.check`
recomputes the comparison and every README figure block from those files, failing on an edited number."""

from __future__ import annotations

import csv
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest

from cptlab.cli.compare import compare, main
from cptlab.compare.archive import OPTIONS, read_options
from cptlab.errors import CptlabError
from cptlab.utils.io import OUTPUT_MARKER

ROOT = Path(__file__).resolve().parents[2]


def _check():
    """experiments/check.py as a module (experiments/ is not a package)."""
    name = "cptlab_experiments_check"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / "check.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def study(seeded_sweep, tmp_path) -> Path:
    """A repository-like root: experiments/toy/results from an archived comparison of the seeded sweep, and a
    README holding one figure block rendered from its summary.csv."""
    root = tmp_path / "repo"
    results = root / "experiments" / "toy" / "results"
    main([str(seeded_sweep), "--out", str(results), "--archive", "--budget", "en=0.05"])
    spec = "experiments/toy/results/summary.csv | label=run | n | forgetting=en Δbpb | forgetting_vs_ref_verdict=verdict"
    check = _check()
    readme = root / "experiments" / "toy" / "README.md"
    readme.write_text(f"# toy\n\n<!-- figures: {spec} -->\n{check.render(spec, root)}<!-- /figures -->\n")
    return root


def test_archive_keeps_each_runs_record_and_the_options(seeded_sweep, study):
    archive = study / "experiments" / "toy" / "results" / "runs"
    kept = sorted(p.relative_to(archive).as_posix() for p in archive.rglob("*") if p.is_file())
    runs = sorted(p.name for p in seeded_sweep.iterdir())
    assert len(runs) == 12
    assert kept == sorted([OPTIONS, OUTPUT_MARKER] + [f"{r}/{f}" for r in runs for f in
                                       ("summary.json", "metrics.csv", ".hydra/config.yaml", ".hydra/overrides.yaml")])
    for run in runs:  # byte for byte
        assert (archive / run / "metrics.csv").read_bytes() == (seeded_sweep / run / "metrics.csv").read_bytes()
    options = read_options(archive)
    assert options["paths"] == ["."] and options["budgets"] == {"en": 0.05} and options["margin"] > 0


def test_the_archive_alone_recomputes_the_same_tables(study, tmp_path):
    results = study / "experiments" / "toy" / "results"
    again = tmp_path / "again"
    compare([results / "runs"], out=again, budgets={"en": 0.05}, plots=False)
    assert not list(again.glob("*.png"))
    drop = lambda rows: [{k: v for k, v in r.items() if k != "run_dir"} for r in rows]  # noqa: E731
    assert drop(_rows(again / "summary.csv")) == drop(_rows(results / "summary.csv"))
    assert len(_rows(results / "summary.csv")) == 4


def test_archive_refuses_to_copy_a_run_into_itself(seeded_sweep):
    run = next(seeded_sweep.iterdir())
    with pytest.raises(CptlabError, match="lies inside the compared run"):
        compare([run], out=run / "cmp", archive=True, plots=False)


def test_a_second_archive_replaces_the_first_and_a_users_directory_is_refused(seeded_sweep, tmp_path):
    out = tmp_path / "cmp"
    compare([seeded_sweep], out=out, archive=True, plots=False)
    one_ratio = [p for p in seeded_sweep.iterdir() if p.name.startswith("data.replay_ratio=0.5,")]
    compare(one_ratio, out=out, archive=True, plots=False)  # fewer runs: none of the first archive's left over
    assert sorted(p.parent.name for p in (out / "runs").glob("*/summary.json")) == sorted(p.name for p in one_ratio)
    users = tmp_path / "users"
    (users / "runs").mkdir(parents=True)
    (users / "runs" / "notes.txt").write_text("mine")
    with pytest.raises(CptlabError, match="--archive"):
        compare([seeded_sweep], out=users, archive=True, plots=False)
    assert (users / "runs" / "notes.txt").read_text() == "mine"


def test_check_passes_on_a_consistent_study(study, capsys):
    assert _check().main([], root=study) == 0
    assert "1 archived comparisons recomputed, 1 figure blocks checked, 0 mismatches" in capsys.readouterr().out


def test_check_fails_when_a_readme_number_is_edited(study, capsys):
    readme = study / "experiments" / "toy" / "README.md"
    text = readme.read_text()
    first = next(line for line in text.splitlines() if line.startswith("| data.replay_ratio=0 "))
    number = first.split("|")[3].split("±")[0].strip()  # the en Δbpb mean of that row
    edited = f"{float(number) + 0.001:+.4f}"
    readme.write_text(text.replace(first, first.replace(number, edited, 1)))
    assert _check().main([], root=study) == 1
    assert "figures block 'experiments/toy/results/summary.csv' differs" in capsys.readouterr().err
    assert _check().main(["--write"], root=study) == 0  # --write re-renders it
    assert readme.read_text() == text


def test_write_still_fails_on_a_block_it_cannot_render(study, capsys):
    """--write re-renders blocks whose numbers differ, but a block it cannot render (a field no row has) stays
    a failure that names the block, not an empty table that passes."""
    readme = study / "experiments" / "toy" / "README.md"
    spec = "experiments/toy/results/summary.csv | label=run | no_such_column"
    readme.write_text(readme.read_text() + f"\n<!-- figures: {spec} -->\n<!-- /figures -->\n")
    assert _check().main(["--write"], root=study) == 1
    assert f"figures block '{spec}': KeyError('no_such_column')" in capsys.readouterr().err
    assert f"<!-- figures: {spec} -->\n<!-- /figures -->" in readme.read_text()  # left as it was


def test_check_fails_when_a_committed_table_is_edited(study, capsys):
    summary = study / "experiments" / "toy" / "results" / "summary.csv"
    rows = _rows(summary)
    rows[1]["forgetting"] = str(float(rows[1]["forgetting"]) + 1e-6)
    with open(summary, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    check = _check()
    problems = check.recompute(study / "experiments" / "toy" / "results" / "runs")
    assert len(problems) == 1 and "row 2" in problems[0] and "forgetting: committed" in problems[0]


def test_check_fails_when_a_run_record_is_edited(study):
    archive = study / "experiments" / "toy" / "results" / "runs"
    summary_path = next(archive.glob("data.replay_ratio=0.5,seed=1/summary.json"))
    summary = json.loads(summary_path.read_text())
    summary["domains"]["en"]["bpb_end"] += 0.01
    summary["final"]["val/en/bpb"] += 0.01
    summary_path.write_text(json.dumps(summary))
    assert _check().recompute(archive)  # the table no longer follows from the runs


def test_results_without_per_run_data_fail(study, capsys):
    assert _check().main([], root=study) == 0
    old = study / "experiments" / "old" / "results" / "en_eval"
    old.mkdir(parents=True)
    shutil.copy(study / "experiments" / "toy" / "results" / "summary.csv", old / "summary.csv")
    assert _check().main([], root=study) == 1
    assert "experiments/old/results/en_eval: summary.csv without runs/" in capsys.readouterr().err


def test_figure_cells_format_means_intervals_and_text():
    check = _check()
    col = check.Column("forgetting", None, "f")
    assert check.cell({"forgetting": "0.0123456", "forgetting_ci95": "0.00456"}, col) == "+0.0123 ± 0.0046"
    assert check.cell({"n": "3"}, check.Column("n", None, "n")) == "3"
    assert check.cell({"new_bpb": "2.5", "new_bpb_ci95": ""}, check.Column("new_bpb", ".2f", "x")) == "2.50"
    assert check.cell({"label": "a|b"}, check.Column("label", None, "run")) == "a\\|b"
    assert check.parse_spec("f.csv | a:.3f=A | b | metric==x/acc")[1:] == (
        [check.Column("a", ".3f", "A"), check.Column("b", None, "b")], {"metric": "x/acc"})


def test_figures_from_run_records_render_per_file_or_per_entry_and_fail_when_edited(study, capsys):
    """A single run's figures (the demo's) come from its archived summary.json: a row per entry of `domains`."""
    check = _check()
    record = "experiments/toy/results/runs/data.replay_ratio=0.25,seed=0/summary.json"
    spec = f"{record}#domains | @name=run | key=domain | bpb_start:.3f=@ step 0 | delta_bpb:+.4f=Δ | role==replay"
    summary = json.loads((study / record).read_text())
    en = summary["domains"]["en"]
    assert check.render(spec, study).splitlines()[2] == (
        f"| demo_zh | en | {en['bpb_start']:.3f} | {en['delta_bpb']:+.4f} |")
    assert check.render(f"{record} | steps | throughput.tokens_per_sec:.0f=tok/s", study).splitlines()[2] == (
        f"| 100 | {summary['throughput']['tokens_per_sec']:.0f} |")
    glob = "experiments/toy/results/runs/data.replay_ratio=0.5,seed=*/summary.json | replay_ratio:.2f=r"
    assert check.render(glob, study).count("| 0.50 |") == 3
    readme = study / "experiments" / "toy" / "README.md"
    body = check.render(spec, study)
    readme.write_text(readme.read_text() + f"\n<!-- figures: {spec} -->\n{body}<!-- /figures -->\n")
    assert check.main([], root=study) == 0
    readme.write_text(readme.read_text().replace(f"{en['delta_bpb']:+.4f}", f"{en['delta_bpb'] + 0.001:+.4f}"))
    assert check.main([], root=study) == 1
    assert f"figures block '{record}#domains' differs" in capsys.readouterr().err
    (study / "rec.json").write_text(json.dumps({"name": "r", "domains": {"a": {"x": 1.0}, "b": {"x": None, "y": 2}}}))
    assert check.render("rec.json#domains | key | x:.1f | y:.1f", study).splitlines()[2:] == [
        "| a | 1.0 | — |", "| b | — | 2.0 |"]
    with pytest.raises(KeyError):
        check.render("rec.json#domains | key | z", study)  # no record has it: a typo in the spec
    (study / "rec.json").write_text(json.dumps({"overrides": ["seed=0", "tokenizer.init=mean"], "steps": [{"a": 1}],
                                                "domains": {"a": {"x": 1.0}}}))
    assert check.render("rec.json#domains | @overrides=run | key | x:.1f", study).splitlines()[2] == (
        "| seed=0, tokenizer.init=mean | a | 1.0 |")  # a list of scalars joined; a list of mappings left out
    with pytest.raises(KeyError):
        check.render("rec.json#domains | @steps | x", study)
    missing = spec.replace("seed=0", "seed=9")
    readme.write_text(readme.read_text() + f"\n<!-- figures: {missing} -->\n<!-- /figures -->\n")
    check.main([], root=study)
    assert "no file matches" in capsys.readouterr().err


def test_the_repository_figures_recompute():
    """`python -m experiments.check` on this repository: every archived comparison and figure block."""
    assert _check().main([]) == 0

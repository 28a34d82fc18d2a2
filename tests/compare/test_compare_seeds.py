"""Runs that differ only in seed are one row (mean ± 95% interval, n), drawn with bands and error bars;
rows are compared with a reference row; the eval-data checks; --budget on a sweep with a known curve."""

import csv
import json
import math

import pytest

from cptlab.cli.compare import main
from cptlab.compare.plots import plot_forgetting_curves, plot_tradeoff
from cptlab.compare.runs import eval_data_warnings, group_runs, load_runs, resolve_roles
from cptlab.compare.stats import t_quantile
from cptlab.compare.table import build_rows, markdown

# As tests/compare/conftest.py builds the seeded sweep: en forgetting 0.2 - 0.3 r, zh bpb 2 + 0.2 r, seeds -d, 0, +d.
SEED_RATIOS = (0.0, 0.25, 0.5, 0.75)
SEED_NOISE = (0, 1, 2)


def seeded_forgetting(ratio):
    return 0.2 - 0.3 * ratio


def seeded_new_bpb(ratio):
    return 2.0 + 0.2 * ratio


CI3 = t_quantile(0.975, 2) * 0.01 / math.sqrt(3)  # seeds at -0.01, 0, +0.01: s = 0.01, n = 3


def test_seeds_are_one_row_with_mean_interval_and_n(seeded_sweep):
    runs = load_runs([seeded_sweep])
    assert len(runs) == 12
    assert runs[0].label == "data.replay_ratio=0 · seed=0" and runs[0].group_label == "data.replay_ratio=0"
    groups = group_runs(runs)
    assert [g.label for g in groups] == [f"data.replay_ratio={r:g}" for r in SEED_RATIOS]
    assert all(g.seeds == [0, 1, 2] for g in groups)
    rows = build_rows(groups, resolve_roles(runs))
    for ratio, row in zip(SEED_RATIOS, rows):
        assert row["n"] == 3 and row["seeds"] == "0,1,2"
        assert row["forgetting"] == pytest.approx(seeded_forgetting(ratio))
        assert row["forgetting_ci"] == pytest.approx(CI3)
        assert row["new_bpb"] == pytest.approx(seeded_new_bpb(ratio))
        assert row["learning_ci"] == pytest.approx(CI3)
        assert row["steps"] == 100 and row["steps_ci"] == 0.0


def test_rows_against_the_reference(seeded_sweep, seeded_run):
    runs = load_runs([seeded_sweep])
    rows = build_rows(runs, resolve_roles(runs))
    assert rows[0]["forgetting_vs_ref_text"] == "reference"
    # The same seeds on both rows, each seed shifting both by the same amount: paired, the differences exact.
    d = rows[1]["forgetting_vs_ref"]
    assert (d.method, d.mean, d.ci, d.verdict) == ("paired", pytest.approx(-0.075), pytest.approx(0.0), "difference")
    assert rows[1]["forgetting_vs_ref_text"] == "-0.0750 ± 0.0000 difference"
    # Without shared seeds the same rows compare by Welch (df = 4), Holm-adjusted over the table's 6 comparisons.
    for run in runs:
        if run.group_label == "data.replay_ratio=0.25":
            run.seed = None if run.seed is None else run.seed + 10
    welch = build_rows(runs, resolve_roles(runs))[1]["forgetting_vs_ref"]
    assert welch.method == "Welch" and welch.df == pytest.approx(4.0)
    assert welch.se == pytest.approx(0.01 * math.sqrt(2 / 3)) and welch.verdict == "difference"
    assert welch.ci > t_quantile(0.975, 4) * welch.se  # wider than the unadjusted 95% interval
    # A row 0.0033 from the reference with seeds 0.01 apart: inside the interval.
    (seeded_sweep / "extra").mkdir()
    seeded_run(seeded_sweep / "extra" / "a", ["experiment=demo_zh", "data.replay_ratio=0.26", "seed=0"], 0.25, 0)
    seeded_run(seeded_sweep / "extra" / "b", ["experiment=demo_zh", "data.replay_ratio=0.26", "seed=1"], 0.25, 1)
    seeded_run(seeded_sweep / "extra" / "c", ["experiment=demo_zh", "data.replay_ratio=0.26", "seed=2"], 0.26, 2)
    runs = load_runs([seeded_sweep])
    close = {r["label"]: r for r in build_rows(runs, resolve_roles(runs), reference="data.replay_ratio=0.25")}
    # Paired differences 0, 0, -0.003: within the default margin of 0.01 bpb, not within 0.001.
    near = close["data.replay_ratio=0.26"]["forgetting_vs_ref"]
    assert near.method == "paired" and near.mean == pytest.approx(-0.001) and near.verdict == "equivalent"
    assert abs(near.mean) + near.ci < 0.01 and near.ci > abs(near.mean)
    assert close["data.replay_ratio=0.26"]["forgetting_vs_ref_text"].endswith(" equivalent")
    assert close["data.replay_ratio=0.5"]["forgetting_vs_ref_text"].endswith(" difference")
    tight = {r["label"]: r for r in build_rows(runs, resolve_roles(runs), reference="data.replay_ratio=0.25",
                                                margin=0.001)}  # fmt: skip
    assert tight["data.replay_ratio=0.26"]["forgetting_vs_ref"].verdict == "inconclusive"


def test_twin_rows_share_one_comparison_and_count_once_in_the_family(seeded_sweep, seeded_run, tmp_path):
    # An EMA run's raw weights train exactly as the run without EMA: its row has that row's figures seed for
    # seed. Compared with a third row, the two are one test, not two: Holm's m counts it once.
    for seed in SEED_NOISE:
        seeded_run(seeded_sweep / "twin" / str(seed), ["experiment=demo_zh", "data.replay_ratio=0.5", "retention=ema",
                                                      f"seed={seed}"], 0.5, seed)
    runs = load_runs([seeded_sweep])
    rows = {r["label"]: r for r in build_rows(runs, resolve_roles(runs))}
    plain, twin = rows["data.replay_ratio=0.5"], rows["data.replay_ratio=0.5, retention=ema"]
    assert twin["forgetting_vs_ref"] is plain["forgetting_vs_ref"] and twin["learning_vs_ref"] is plain["learning_vs_ref"]
    main([str(seeded_sweep), "--out", str(tmp_path)])
    md = (tmp_path / "summary.md").read_text()
    assert "Holm-Bonferroni over the 6 comparisons" in md  # 3 rows x 2 figures, the twin not counted again


def test_outputs_carry_the_intervals(seeded_sweep, tmp_path, capsys):
    main([str(seeded_sweep), "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert f"+0.2000 ± {CI3:.4f}" in out  # the printed forgetting of replay ratio 0
    with open(tmp_path / "summary.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [t["label"] for t in table] == [f"data.replay_ratio={r:g}" for r in SEED_RATIOS]
    assert [t["n"] for t in table] == ["3"] * 4
    assert float(table[0]["forgetting_ci95"]) == pytest.approx(CI3)
    assert table[0]["forgetting_vs_ref_verdict"] == "reference" and table[1]["forgetting_vs_ref_ci95"]
    md = (tmp_path / "summary.md").read_text()
    assert table[1]["forgetting_vs_ref_verdict"] == "difference" and table[1]["forgetting_vs_ref_method"] == "paired"
    assert "95% t-interval" in md and "Welch" in md and "Holm-Bonferroni over the 6 comparisons" in md
    assert "no measurable difference" not in md
    assert "## Warnings" not in md


def test_plots_draw_bands_and_error_bars(seeded_sweep, tmp_path):
    runs = load_runs([seeded_sweep])
    roles = resolve_roles(runs)
    drawn = plot_forgetting_curves(runs, roles, tmp_path / "curves.png")
    assert drawn["en"] == [f"data.replay_ratio={r:g} (n=3)" for r in SEED_RATIOS]
    out = plot_tradeoff(build_rows(runs, roles), roles, tmp_path / "tradeoff.png")
    assert out["points"] == [f"data.replay_ratio={r:g}" for r in SEED_RATIOS]
    assert (tmp_path / "curves.png").stat().st_size > 10_000


def test_tradeoff_axes_span_the_differences_not_zero(seeded_sweep, tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    from cptlab.compare import plots

    captured = {}
    monkeypatch.setattr(plots, "_save", lambda fig, path: captured.setdefault("fig", fig))
    runs = load_runs([seeded_sweep])
    roles = resolve_roles(runs)
    plots.plot_tradeoff(build_rows(runs, roles), roles, tmp_path / "t.png")
    ax = captured["fig"].axes[0]
    y0, y1 = ax.get_ylim()
    assert 0.7 < y0 < 0.85 and 1.0 < y1 < 1.1  # learning 0.85-1.0 fills the axis; 0 is far outside
    texts = [t for t in ax.texts if t.get_text().startswith("data.")]
    renderer = captured["fig"].canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in texts]
    assert len(boxes) == 4 and not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    plt.close(captured["fig"])


def test_identical_eval_data_passes_and_differences_are_warned(seeded_sweep, capsys):
    runs = load_runs([seeded_sweep])
    roles = resolve_roles(runs)
    assert eval_data_warnings(group_runs(runs), roles.new + roles.old) == []
    # One seed of ratio 0.5 scored en on other blocks; ratio 0.75 held out other documents.
    path = next(seeded_sweep.glob("data.replay_ratio=0.5,seed=1")) / "summary.json"
    summary = json.loads(path.read_text())
    summary["domains"]["en"]["eval_blocks_sha256"] = "other-blocks"
    path.write_text(json.dumps(summary))
    for seed in SEED_NOISE:
        path = seeded_sweep / f"data.replay_ratio=0.75,seed={seed}" / "summary.json"
        summary = json.loads(path.read_text())
        summary["split"]["domains"]["zh"]["heldout_sha256"] = "other-docs"
        path.write_text(json.dumps(summary))
    runs = load_runs([seeded_sweep])
    warnings = eval_data_warnings(group_runs(runs), roles.new + roles.old)
    assert warnings == [
        "zh: rows were evaluated on different held-out documents (data.split_seed, heldout or sources differ): "
        "{data.replay_ratio=0, data.replay_ratio=0.25, data.replay_ratio=0.5} vs {data.replay_ratio=0.75}",
        "en: the runs pooled in row 'data.replay_ratio=0.5' were scored on 2 different sets of eval blocks; its "
        "mean mixes different test data",
        "en: rows with the same held-out documents and tokenizer were scored on different eval blocks "
        "(data.seq_len or eval.max_blocks differ): {data.replay_ratio=0, data.replay_ratio=0.25, "
        "data.replay_ratio=0.5, data.replay_ratio=0.75} vs {data.replay_ratio=0.5}"]
    main([str(seeded_sweep)])
    captured = capsys.readouterr()
    assert captured.err.count("cptlab-compare: warning:") == 3
    assert "## Warnings" in (seeded_sweep / "summary.md").read_text()
    assert markdown(build_rows(runs, roles), roles, warnings).count("- ⚠ ") == 3


def test_budget_finds_the_smallest_ratio_within_it(seeded_sweep, capsys):
    main([str(seeded_sweep), "--budget", "en=0.05"])
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if "en forgetting <= 0.05 bpb" in line)
    assert "data.replay_ratio >= 0.500 (95% CI " in line and "bootstrap over seeds" in line
    assert ">= 0.583 for its upper 95% bound" in line
    assert "zh bpb there 2.1000" in line and "+0.1000 vs data.replay_ratio=0" in line
    assert "## Replay-ratio budget" in (seeded_sweep / "summary.md").read_text()
    main([str(seeded_sweep), "--budget", "en=0.125"])
    assert "data.replay_ratio >= 0.250" in capsys.readouterr().out
    main([str(seeded_sweep), "--budget", "en=-0.5"])
    assert "no swept data.replay_ratio gets there" in capsys.readouterr().out


def test_budget_errors_are_one_line(seeded_sweep, capsys):
    for args, message in ((["--budget", "zh=0.05"], "--budget zh: not an old domain"),
                          (["--budget", "en"], "expected DOMAIN=MAX_FORGETTING")):
        with pytest.raises(SystemExit) as exc:
            main([str(seeded_sweep), *args])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
    with pytest.raises(SystemExit):
        main([str(seeded_sweep / "data.replay_ratio=0,seed=0"), "--budget", "en=0.05"])
    assert "two or more values of data.replay_ratio" in capsys.readouterr().err


def test_budget_is_fitted_per_family_of_the_other_overrides(tmp_path, seeded_run, capsys):
    # replay ratio x LoRA rank x seed: rank 16 forgets 0.03 less at every ratio than rank 4.
    root = tmp_path / "sweep"
    for rank, shift in ((4, 0.0), (16, -0.03)):
        for ratio in (0.0, 0.5):
            for seed in (0, 1, 2):
                overrides = ["experiment=replay_sweep", f"data.replay_ratio={ratio:g}", f"adapter.r={rank}",
                             f"seed={seed}"]
                seeded_run(root / f"r{rank}-{ratio:g}-{seed}", overrides, ratio, seed, shift=shift)
    main([str(root), "--budget", "en=0.05"])
    lines = [line.strip() for line in capsys.readouterr().out.splitlines() if "en forgetting <=" in line]
    assert len(lines) == 2
    assert lines[0].startswith("[adapter.r=4] en forgetting <= 0.05 bpb: data.replay_ratio >= 0.500")
    # 0.17 at ratio 0 and 0.02 at 0.5, linear in between: 0.05 at 0.4.
    assert lines[1].startswith("[adapter.r=16] en forgetting <= 0.05 bpb: data.replay_ratio >= 0.400")


def test_a_narrow_terminal_keeps_labels_and_intervals(seeded_sweep, tmp_path):
    import io

    from rich.console import Console

    from cptlab.cli.compare import compare

    for width in (80, 100):
        console = Console(file=io.StringIO(), width=width)
        compare([seeded_sweep], out=tmp_path, console=console)
        printed = console.file.getvalue()
        assert all(len(line) <= width for line in printed.splitlines() if line[:1] in "┏┃┡│└")  # the table fits
        assert all(f"data.replay_ratio={r:g} " in printed for r in SEED_RATIOS)  # labels never squeezed out
        assert f"+0.2000 ± {CI3:.4f}" in printed


def test_rows_starting_from_different_bpb_are_measured_from_the_reference_start(seeded_sweep, seeded_run, capsys):
    """A row whose en bpb at step 0 is 0.2 higher (a random init of the new rows, another tokenizer) but that
    ends where the ratio-0 row ends forgets as much as that row, not 0.2 less: with differing starts, every row
    is measured from the reference row's step 0 and the table says so."""
    runs = load_runs([seeded_sweep])
    assert build_rows(runs, resolve_roles(runs))[0]["starts"] == {}  # same starts: each run from its own
    (seeded_sweep / "init").mkdir()
    for seed in SEED_NOISE:
        seeded_run(seeded_sweep / "init" / f"s{seed}", ["experiment=demo_zh", "data.replay_ratio=0",
                                                         "tokenizer.init=random", f"seed={seed}"], 0.0, seed,
                   en_start=1.7)
    runs = load_runs([seeded_sweep])
    rows = build_rows(runs, resolve_roles(runs))
    assert rows[0]["starts"] == {"en": pytest.approx(1.5)}
    late = next(r for r in rows if "tokenizer.init=random" in r["label"])
    ratio0 = next(r for r in rows if r["label"] == "data.replay_ratio=0")
    assert late["forgetting"] == pytest.approx(ratio0["forgetting"]) == pytest.approx(seeded_forgetting(0.0))
    assert late["runs"][0]["forgetting"] != pytest.approx(late["runs"][0]["old_bpb"] - 1.7)  # not its own start
    assert late["forgetting_vs_ref_text"] == rows[1]["forgetting_vs_ref_text"] or late["forgetting_vs_ref"] is not None
    main([str(seeded_sweep), "--out", str(seeded_sweep / "cmp")])
    err = capsys.readouterr().err
    assert "en: the rows start from different bpb at step 0" in err and "zh:" not in err
    assert "measured from the reference row's (data.replay_ratio=0: 1.5000)" in err
    assert "en: the rows start from different bpb" in (seeded_sweep / "cmp" / "summary.md").read_text()


def test_margin_option(seeded_sweep, tmp_path, capsys):
    main([str(seeded_sweep), "--out", str(tmp_path), "--margin", "0.2"])
    assert "± 0.2 bpb (the --margin)" in (tmp_path / "summary.md").read_text()
    for bad in ("0", "-1", "x"):
        with pytest.raises(SystemExit):
            main([str(seeded_sweep), "--out", str(tmp_path), "--margin", bad])
        assert f"--margin: {bad!r} is not a positive number of bits per byte" in capsys.readouterr().err

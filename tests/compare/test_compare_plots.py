"""The two pictures: valid PNGs, and what matplotlib actually drew."""

from cptlab.compare.plots import plot_forgetting_curves, plot_tradeoff
from cptlab.compare.runs import Roles, load_runs, resolve_roles
from cptlab.compare.table import build_rows

PNG = b"\x89PNG\r\n\x1a\n"


def assert_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG and len(data) > 10_000


def test_forgetting_curves_one_line_per_run_per_domain(sweep, tmp_path):
    runs = load_runs([sweep])
    drawn = plot_forgetting_curves(runs, resolve_roles(runs), tmp_path / "curves.png")
    assert_png(tmp_path / "curves.png")
    assert list(drawn) == ["zh", "en"]  # new domain first
    for labels in drawn.values():
        assert labels == ["data.replay_ratio=0.1", "data.replay_ratio=0.25",
                          "data.replay_ratio=0.25, optim.lr=10.0 (failed)", "data.replay_ratio=0.5",
                          "data.replay_ratio=0.75 (unfinished)"]


def test_tradeoff_points_and_front(sweep, tmp_path):
    runs = load_runs([sweep])
    roles = resolve_roles(runs)
    out = plot_tradeoff(build_rows(runs, roles), roles, tmp_path / "tradeoff.png")
    assert_png(tmp_path / "tradeoff.png")
    assert out["points"] == ["data.replay_ratio=0.1", "data.replay_ratio=0.25", "data.replay_ratio=0.5"]
    assert out["front"] == ["data.replay_ratio=0.1", "data.replay_ratio=0.25"]


def test_plots_with_nothing_to_show_still_write(sweep, tmp_path):
    runs = load_runs([sweep / "3"])  # failed at step 12: one evaluation, nothing completed
    roles = Roles(new=["zh"], old=[])
    rows = build_rows(runs, roles)
    assert plot_tradeoff(rows, roles, tmp_path / "t.png") == {"points": [], "front": []}
    assert plot_forgetting_curves(runs, roles, tmp_path / "c.png") == {"zh": ["3 (failed)"]}
    assert_png(tmp_path / "t.png")


def test_rows_on_the_same_point_share_one_label(sweep, tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    from cptlab.compare import plots

    runs = load_runs([sweep])
    roles = resolve_roles(runs)
    rows = build_rows(runs, roles)
    # A row bit for bit on another's point (as an EMA run's raw weights are on the run without EMA).
    twin = next(r for r in rows if r["label"] == "data.replay_ratio=0.5")
    rows.append({**twin, "label": "data.replay_ratio=0.5, retention=ema"})
    captured = {}
    monkeypatch.setattr(plots, "_save", lambda fig, path: captured.setdefault("fig", fig))
    out = plots.plot_tradeoff(rows, roles, tmp_path / "t.png")
    assert out["points"][-1] == "data.replay_ratio=0.5, retention=ema"  # still plotted (and in the table)
    labels = [t.get_text() for t in captured["fig"].axes[0].texts]
    assert sorted(labels) == ["data.replay_ratio=0.1", "data.replay_ratio=0.25",
                              "data.replay_ratio=0.5 + 1 more at this point"]
    plt.close(captured["fig"])


def test_labels_that_cannot_fit_become_numbers_with_a_key(sweep, tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    from cptlab.compare import plots

    runs = load_runs([sweep])
    roles = resolve_roles(runs)
    rows = build_rows(runs, roles)
    base = next(r for r in rows if r["label"] == "data.replay_ratio=0.25")
    long = ", ".join(f"override.number_{k}=a_rather_long_value" for k in range(4))
    rows += [{**base, "label": f"{long}, seed_group={k}", "forgetting": base["forgetting"] + 0.001 * k,
              "learning": base["learning"] + 0.001 * k, "pareto_front": False} for k in range(1, 9)]
    captured = {}
    monkeypatch.setattr(plots, "_save", lambda fig, path: captured.setdefault("fig", fig))
    plots.plot_tradeoff(rows, roles, tmp_path / "t.png")
    fig = captured["fig"]
    ax = fig.axes[0]
    renderer = fig.canvas.get_renderer()
    numbers = [t for t in ax.texts if t.get_text().isdigit()]
    assert sorted(int(t.get_text()) for t in numbers) == list(range(1, 12))  # 3 rows + 8 crowded ones
    boxes = [t.get_window_extent(renderer) for t in numbers]
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    (key,) = [t for t in ax.texts if "\n" in t.get_text()]
    lines = key.get_text().splitlines()
    assert len(lines) == 11 and lines[0] == "1: data.replay_ratio=0.1" and lines[-1].endswith("seed_group=8")
    plt.close(fig)

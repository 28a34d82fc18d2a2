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

"""The per-run forgetting-curve picture: each domain's held-out bits per byte against tokens seen."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from cptlab.run.layout import PLOT  # noqa: E402
from cptlab.run.metrics import eval_curve, read_series  # noqa: E402
from cptlab.utils.io import atomic_write_bytes  # noqa: E402


def plot_forgetting_curve(run_dir: Path, roles: dict[str, str], title: str = "") -> Path:
    """Write `run_dir/forgetting_curve.png`: one line per domain, solid for new, dashed for replay/old."""
    run_dir = Path(run_dir)
    series = read_series(run_dir)
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for domain, role in roles.items():
        x, y = eval_curve(series, domain)
        if x:
            ax.plot(x, y, marker="o", ms=3, ls="-" if role == "new" else "--", label=f"{domain} ({role})")
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("held-out bits per byte")
    ax.set_title(title or run_dir.name, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = run_dir / PLOT
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(out, buf.getvalue())
    return out

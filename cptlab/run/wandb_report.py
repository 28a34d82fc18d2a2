"""The end-of-run additions to a wandb run: summary fields and the forgetting-curve line series."""

from __future__ import annotations

from pathlib import Path

from cptlab.rundir.metrics import eval_curve, read_series


def _flat(prefix: str, obj, out: dict) -> dict:
    if isinstance(obj, dict):
        for k, v in obj.items():
            _flat(f"{prefix}/{k}" if prefix else str(k), v, out)
    elif isinstance(obj, (int, float, str, bool)) or obj is None:
        out[prefix] = obj
    return out


def report_to_wandb(loggers, summary: dict, run_dir: Path, roles: dict[str, str]) -> None:
    for lg in loggers:
        if type(lg).__name__ != "WandbLogger":
            continue
        import wandb

        run = lg.experiment
        fields = {k: summary.get(k) for k in ("domains", "tokens_per_char", "vocabulary", "params", "throughput",
                                              "replay_share", "tokens_seen", "wall_time_s", "status")}
        run.summary.update(_flat("cptlab", fields, {}))
        series = read_series(run_dir)
        curves = {name: eval_curve(series, name) for name in roles}
        curves = {name: c for name, c in curves.items() if c[0]}
        if curves:
            run.log({"forgetting_curve": wandb.plot.line_series(
                xs=[c[0] for c in curves.values()], ys=[c[1] for c in curves.values()],
                keys=[f"{n} ({roles[n]})" for n in curves], title="held-out bits per byte", xname="tokens seen")})

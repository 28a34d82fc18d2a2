"""cptlab-merge: interpolations between a run's starting weights and its trained weights, scored per domain.

    cptlab-merge RUN_DIR --alpha 0,0.25,0.5,0.75,1          theta(alpha) scored on every domain's held-out blocks
    cptlab-merge RUN_DIR --alpha 0,0.5,1 --ema              the same towards the EMA weights (retention=ema)
    cptlab-merge RUN_DIR --alpha 0.5 --out DIR              theta(0.5) exported as a plain Hugging Face model

theta(alpha) = (1 - alpha) * theta_0 + alpha * theta_1, where theta_1 is the checkpoint's weights and theta_0 the
model the run started from, rebuilt from the run's config and seed exactly as the run built it
(`pipeline.build_model`: base weights, new token rows from the seeded `grow_embeddings`, the adapter's initial
state, zero-output blocks of block expansion). Only what the run trained moves; new token rows interpolate from
their initial values. LoRA/DoRA weights are not interpolated themselves (that would scale B @ A by alpha^2):
the adapter's scale is, `scaling * alpha` (DoRA's magnitude vector interpolates linearly), so theta(0) is the
model at step 0 and theta(1) the trained one, exactly.

Each alpha is scored like the run's evaluation (`evaluation.eval_sums` on `data.mixture.eval_blocks` of every
domain, bits per UTF-8 byte of the run's tokenizer), so alpha=0 gives the run's step-0 bpb and alpha=1 its
final bpb. The points go beside the run (merge.json + merge.csv; merge_ema.* with --ema; a re-run adds its
alphas to those already there) and onto a trade-off plot with the run's training trajectory (merge.png);
`cptlab-compare` draws them next to the run's point too.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from cptlab.errors import CptlabError
from cptlab.run.plan_values import data_plan_of, parts_of
from cptlab.rundir import layout

DEFAULT_ALPHAS = "0,0.25,0.5,0.75,1"
LORA_WEIGHTS = ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B")


def parse_alphas(text: str) -> list[float]:
    """"0,0.5,1" -> [0.0, 0.5, 1.0]; each a finite number (extrapolation outside [0, 1] is allowed)."""
    alphas = []
    for part in str(text).split(","):
        try:
            value = float(part)
        except ValueError:
            raise CptlabError(f"--alpha {text}: {part.strip()!r} is not a number (write e.g. --alpha 0,0.5,1)")
        if not math.isfinite(value):
            raise CptlabError(f"--alpha {text}: {part.strip()!r} is not finite")
        alphas.append(value)
    return list(dict.fromkeys(alphas))


# -- the interpolated model -------------------------------------------------------------------------------


def _is_lora_weight(name: str) -> bool:
    return any(f".{w}." in f".{name}" for w in LORA_WEIGHTS)


@dataclass
class Interpolation:
    """A run's model whose trained weights can be set to theta(alpha) (`set`)."""
    run: object  # cptlab.run.export.TrainedRun
    start: dict[str, torch.Tensor]  # theta_0 of every parameter the run trained (LoRA A/B left out)
    end: dict[str, torch.Tensor]  # theta_1 of the same
    scalings: list[tuple[dict, str, float]]  # (a LoRA layer's `scaling` dict, adapter name, trained scale)
    alpha: float = 1.0

    @property
    def model(self) -> torch.nn.Module:
        return self.run.model

    def set(self, alpha: float) -> None:
        params = _named(self.model)
        with torch.no_grad():
            for name, start in self.start.items():
                # torch.lerp is exact at both ends: start at 0, end at 1.
                params[name].copy_(torch.lerp(start, self.end[name], float(alpha)))
        for scaling, key, value in self.scalings:
            scaling[key] = value * float(alpha)
        self.alpha = float(alpha)


def _named(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    from cptlab.model.freeze import clean_name

    return {clean_name(n): p for n, p in model.named_parameters()}


def load_interpolation(run_dir: Path | str, *, weights: str = "raw") -> Interpolation:
    """The run's trained model (`export.load_trained`) with theta_0 of every weight it trained, taken from the
    model rebuilt as the run built it before training."""
    from cptlab.run import pipeline
    from cptlab.run.export import load_trained, select_weights
    from cptlab.training.module import PREFIX

    run = load_trained(run_dir, weights=weights)
    saved = select_weights(run.checkpoint, weights)
    trained = {k[len(PREFIX):] for k in saved.get("state_dict", {}) if k.startswith(PREFIX)}
    trained |= {k[len(PREFIX):] if k.startswith(PREFIX) else k for k in saved.get("cptlab", {}).get("rows", {})}
    _, tokenizer, base_tokenizer = _run_tokenizers(run)
    # seeded: the run's step-0 model
    initial, _ = pipeline.build_model(parts_of(run.cfg), tokenizer, base_tokenizer, adapter=run.cfg.adapter)
    start_params, end_params = _named(initial), _named(run.model)
    start, end = {}, {}
    for name in sorted(trained):
        if name not in end_params or _is_lora_weight(name):
            continue
        start[name] = start_params[name].detach().clone()
        end[name] = end_params[name].detach().clone()
    del initial, start_params
    scalings = []
    for module in run.model.modules():
        scaling = getattr(module, "scaling", None)
        if isinstance(scaling, dict) and hasattr(module, "lora_A"):
            scalings.extend((scaling, key, float(value)) for key, value in scaling.items())
    if run.cfg.adapter.name in ("lora", "dora") and not scalings:
        raise CptlabError(f"{run_dir}: adapter={run.cfg.adapter.name} but the rebuilt model has no LoRA layers")
    return Interpolation(run, start, end, scalings)


def _run_tokenizers(run):
    from cptlab.run.export import _tokenizers

    return _tokenizers(run.cfg, run.run_dir)


# -- scoring ------------------------------------------------------------------------------------------------


def eval_sets(run) -> tuple[dict[str, torch.Tensor], torch.Tensor, dict[str, str]]:
    """The run's held-out blocks per domain, the bytes of each token, and each domain's role: built as the run
    built them (pipeline.build_data, eval_blocks with data.seq_len and eval.max_blocks)."""
    from cptlab.data.mixture import eval_blocks
    from cptlab.run import pipeline
    from cptlab.tokenizer.byte_lengths import token_byte_lengths

    cfg = run.cfg
    domains = pipeline.build_data(data_plan_of(cfg), run.tokenizer_dir)
    blocks = {d.name: torch.from_numpy(eval_blocks(d, cfg.data.seq_len, cfg.eval.max_blocks)) for d in domains}
    _, tokenizer, _ = _run_tokenizers(run)
    roles = {name: str(d.role) for name, d in cfg.data.domains.items()}
    return blocks, torch.from_numpy(token_byte_lengths(tokenizer)), roles


def _doc_eos(run) -> int | None:
    """The EOS id the run's evaluation masked documents at (data.doc_masking), None when it did not."""
    if not run.cfg.data.get("doc_masking"):
        return None
    return _run_tokenizers(run)[1].eos_token_id


def score(interp: Interpolation, alphas: list[float], blocks: dict[str, torch.Tensor], token_bytes: torch.Tensor,
          *, batch_size: int) -> list[dict]:
    """[{alpha, bpb: {domain: ...}, loss: {domain: ...}}] for each alpha; the model is left at theta(1)."""
    from cptlab.evaluation.bpb import eval_sums, metrics_from_sums

    points, doc_eos = [], _doc_eos(interp.run)
    try:
        for alpha in alphas:
            interp.set(alpha)
            metrics = {name: metrics_from_sums(eval_sums(interp.model, b, token_bytes, batch_size=batch_size,
                                                         doc_eos=doc_eos))
                       for name, b in blocks.items()}
            points.append({"alpha": alpha, "bpb": {n: m["bpb"] for n, m in metrics.items()},
                           "loss": {n: m["loss"] for n, m in metrics.items()}})
    finally:
        interp.set(1.0)
    return points


def tradeoff(bpb: dict[str, float], start: dict[str, float], roles: dict[str, str]) -> tuple[float | None, float | None]:
    """(forgetting, learning) as cptlab-compare defines them: mean Δbpb of the old (replay) domains and mean bpb
    drop of the new ones, from the step-0 values `start`."""
    old = [bpb[d] - start[d] for d, r in roles.items() if r != "new" and d in bpb and d in start]
    new = [start[d] - bpb[d] for d, r in roles.items() if r == "new" and d in bpb and d in start]
    return (sum(old) / len(old) if old else None), (sum(new) / len(new) if new else None)


def trajectory(run_dir: Path, prefix: str = "val") -> list[dict]:
    """The run's evaluations from metrics.csv: [{step, bpb: {domain: value}}] in step order."""
    path = Path(run_dir) / layout.METRICS
    if not path.is_file():
        return []
    by_step: dict[int, dict[str, float]] = {}
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            for key, value in row.items():
                if key.startswith(f"{prefix}/") and key.endswith("/bpb") and value not in ("", None):
                    domain = key[len(prefix) + 1:-len("/bpb")]
                    by_step.setdefault(int(float(row["step"])), {})[domain] = float(value)
    return [{"step": s, "bpb": by_step[s]} for s in sorted(by_step)]


# -- writing ------------------------------------------------------------------------------------------------


def merge_files(run_dir: Path, weights: str) -> tuple[Path, Path, Path]:
    stem = "merge" if weights == "raw" else f"merge_{weights}"
    return run_dir / f"{stem}.json", run_dir / f"{stem}.csv", run_dir / f"{stem}.png"


def read_merge(run_dir: Path | str, weights: str = "raw") -> dict | None:
    """A run's merge.json (None when cptlab-merge has not scored it)."""
    path = merge_files(Path(run_dir), weights)[0]
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def write_points(run_dir: Path, weights: str, points: list[dict], roles: dict[str, str]) -> dict:
    """Merge `points` into the run's merge.json (by alpha: new values win), write merge.csv; returns the record."""
    from cptlab.utils.io import atomic_write_json, atomic_write_text

    json_path, csv_path, _ = merge_files(run_dir, weights)
    previous = read_merge(run_dir, weights) or {}
    by_alpha = {p["alpha"]: p for p in previous.get("points", [])}
    by_alpha.update({p["alpha"]: p for p in points})
    start = {}
    steps = trajectory(run_dir, "val")
    if steps and steps[0]["step"] == 0:
        start = steps[0]["bpb"]
    elif 0.0 in by_alpha:
        start = by_alpha[0.0]["bpb"]
    merged = []
    for alpha in sorted(by_alpha):
        point = dict(by_alpha[alpha])
        point["forgetting"], point["learning"] = tradeoff(point["bpb"], start, roles)
        merged.append(point)
    record = {"weights": weights, "roles": roles, "step0_bpb": start, "points": merged}
    atomic_write_json(json_path, record)
    domains = sorted(roles)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["alpha", *(f"val/{d}/bpb" for d in domains), *(f"val/{d}/loss" for d in domains),
                     "forgetting", "learning"])
    for p in merged:
        writer.writerow([p["alpha"], *(p["bpb"].get(d, "") for d in domains), *(p["loss"].get(d, "") for d in domains),
                         "" if p["forgetting"] is None else p["forgetting"],
                         "" if p["learning"] is None else p["learning"]])
    atomic_write_text(csv_path, buf.getvalue())
    return record


def plot_merge(run_dir: Path, record: dict, path: Path) -> Path | None:
    """Learning against forgetting: the run's evaluations along training (a line from step 0) and the
    interpolation points (alpha-labelled). None when the run has no old or no new domain to plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    roles, start = record["roles"], record["step0_bpb"]
    prefix = "val" if record["weights"] == "raw" else "val_ema"
    steps = [(s["step"], *tradeoff(s["bpb"], start, roles)) for s in trajectory(run_dir, prefix)]
    steps = [s for s in steps if s[1] is not None and s[2] is not None]
    points = [p for p in record["points"] if p["forgetting"] is not None and p["learning"] is not None]
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(7.0, 5.0), dpi=120)
    if steps:
        ax.plot([s[1] for s in steps], [s[2] for s in steps], color="tab:blue", marker="o", ms=4, lw=1.4,
                label="training (each evaluation)")
        ax.annotate(f"step {steps[-1][0]}", (steps[-1][1], steps[-1][2]), xytext=(6, -12), textcoords="offset points",
                    fontsize=8, color="tab:blue")
    ax.plot([p["forgetting"] for p in points], [p["learning"] for p in points], color="tab:orange", marker="D",
            ms=5, lw=1.2, ls="--", label=f"interpolation base → {record['weights']} weights (α)")
    for p in points:
        ax.annotate(f"α={p['alpha']:g}", (p["forgetting"], p["learning"]), xytext=(6, 4), textcoords="offset points",
                    fontsize=8, color="tab:orange")
    ax.axvline(0, color="grey", lw=0.8, ls=":")
    ax.axhline(0, color="grey", lw=0.8, ls=":")
    new = ", ".join(d for d, r in roles.items() if r == "new") or "-"
    old = ", ".join(d for d, r in roles.items() if r != "new") or "-"
    ax.set_xlabel(f"forgetting: old-domain Δbpb ({old}) → more forgetting")
    ax.set_ylabel(f"learning: new-domain bpb drop ({new}) ↑ better")
    ax.set_title("learning vs forgetting: training trajectory and weight interpolation", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    from cptlab.utils.io import save_figure

    return save_figure(fig, path)


def merge_run(run_dir: Path | str, alphas: list[float], *, weights: str = "raw") -> dict:
    """Score theta(alpha) for each alpha on every domain; write merge.json / merge.csv / merge.png beside the run.
    Returns the record (every point scored so far)."""
    run_dir = Path(run_dir)
    if not alphas:
        raise CptlabError("--alpha: give at least one value")
    interp = load_interpolation(run_dir, weights=weights)
    blocks, token_bytes, roles = eval_sets(interp.run)
    points = score(interp, alphas, blocks, token_bytes, batch_size=int(interp.run.cfg.eval.batch_size))
    record = write_points(run_dir, weights, points, roles)
    plot_merge(run_dir, record, merge_files(run_dir, weights)[2])
    return record


def export_merge(run_dir: Path | str, alpha: float, out: Path | str, *, weights: str = "raw") -> Path:
    """Write theta(alpha) to `out` as a plain Hugging Face model with the run's tokenizer (the export code path:
    adapters merged, written atomically; a non-empty directory that is not a cptlab model export is refused)."""
    from cptlab.model.export import merged_model
    from cptlab.model.save import save_hf_model
    from cptlab.run.export import _write_atomically
    from cptlab.rundir.layout import input_paths
    from cptlab.rundir.summary import read_summary
    from cptlab.utils.io import check_replaceable

    check_replaceable(out, "model", "--out", inputs=input_paths(run_dir))  # before the model is built
    interp = load_interpolation(run_dir, weights=weights)
    interp.set(alpha)
    model = merged_model(interp.model)
    tokenizer_dir = interp.run.tokenizer_dir
    split = (read_summary(Path(run_dir)) or {}).get("split")  # as cptlab-export: the split travels with the weights
    return _write_atomically(Path(out), lambda tmp: save_hf_model(model, tokenizer_dir, tmp, split))

"""Find the run directories under the paths given and load each run: overrides, domain roles, status,
final metrics and eval curves, labelled by the overrides that set it apart from the others; runs that
differ only in `seed` are grouped (one row, mean and 95% interval over the seeds)."""

from __future__ import annotations

import csv
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from cptlab.errors import CptlabError
from cptlab.rundir import layout
from cptlab.rundir.metrics import eval_curve, read_series
from cptlab.rundir.summary import read_summary

RUN_MARKERS = (layout.OVERRIDES, layout.SUMMARY, layout.METRICS)
MAX_DEPTH = 2


@dataclass
class Run:
    path: Path
    status: str  # completed | failed | unfinished
    error: str | None
    overrides: list[str]
    roles: dict[str, str]  # domain -> role, from the run's own config
    summary: dict
    series: dict[str, list[tuple[int, float]]]
    label: str = ""
    warnings: list[str] = field(default_factory=list)
    seed: int | None = None  # the `seed` override, else the config's
    name: str = ""  # the experiment name (config `name`)
    replay_ratio: float | None = None  # data.replay_ratio: the summary's, else the config's
    group_label: str = ""  # the label of its row: `label` without the seed
    view: str = "raw"  # raw | ema (the EMA weights' curves of the same run)

    def curve(self, domain: str, metric: str = "bpb") -> tuple[list[float], list[float]]:
        """(tokens_seen, value) points of val/<domain>/<metric>, points without a token count dropped."""
        xs, ys = eval_curve(self.series, domain, metric)
        points = [(x, y) for x, y in zip(xs, ys) if math.isfinite(x) and math.isfinite(y)]
        return [p[0] for p in points], [p[1] for p in points]

    def domain_bpb(self, domain: str) -> dict[str, float | None]:
        """bpb_start / bpb_end / delta_bpb of one domain: the summary's record when the run finished,
        else the latest evaluation metrics.csv has."""
        record = (self.summary.get("domains") or {}).get(domain) or {}
        values = [v for _, v in self.series.get(f"val/{domain}/bpb", [])]
        deltas = [v for _, v in self.series.get(f"val/{domain}/delta_bpb", [])]
        start = _known(record.get("bpb_start"), values[0] if values else None)
        end = _known(record.get("bpb_end"), values[-1] if values else None)
        fallback = end - start if start is not None and end is not None else None
        delta = _known(record.get("delta_bpb"), deltas[-1] if deltas else None, fallback)
        return {"bpb_start": start, "bpb_end": end, "delta_bpb": delta}

    def latest(self, metric: str) -> float | None:
        points = self.series.get(metric)
        return points[-1][1] if points else None

    def domains(self) -> set[str]:
        """Every domain this run has a record or a curve for."""
        found = set(self.roles) | set(self.summary.get("domains") or {})
        found |= {m[len("val/"):-len("/bpb")] for m in self.series if m.startswith("val/") and m.endswith("/bpb")}
        return found


@dataclass
class Roles:
    new: list[str]
    old: list[str]


def _known(*values):
    return next((v for v in values if v is not None), None)


def natural_key(text: str) -> list:
    """Sort key where embedded integers compare as numbers ("run10" after "run9")."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def is_run_dir(path: Path) -> bool:
    return any((path / marker).is_file() for marker in RUN_MARKERS)


def find_run_dirs(paths: list[Path]) -> list[Path]:
    """Run directories among `paths` and their subdirectories (at most two levels down), in path order."""
    found: list[Path] = []
    for path in map(Path, paths):
        if not path.exists():
            raise CptlabError(f"{path} does not exist")
        if not path.is_dir():
            raise CptlabError(f"{path} is not a directory (give a run or sweep directory)")
        runs = _walk(path, MAX_DEPTH)
        if not runs:
            raise CptlabError(f"no run under {path}: no directory (up to {MAX_DEPTH} levels down) holds "
                              f"{', '.join(RUN_MARKERS)}")
        found += runs
    unique = {p.resolve(): p for p in reversed(found)}  # keeps the first spelling of a run given twice
    return [p for p in found if unique.get(p.resolve()) is p]


def _walk(path: Path, depth: int) -> list[Path]:
    if is_run_dir(path):
        return [path]  # a run's own subdirectories (checkpoints, tokenizer) are not runs
    if depth == 0:
        return []
    children = sorted((c for c in path.iterdir() if c.is_dir() and not c.name.startswith(".")),
                      key=lambda c: natural_key(c.name))
    return [run for child in children for run in _walk(child, depth - 1)]


def _read_yaml(path: Path):
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None


def load_run(path: Path) -> Run:
    summary = read_summary(path) or {}
    status = summary.get("status")
    if status not in ("completed", "failed"):
        status = "unfinished"  # no summary yet, or one a still-running job wrote
    overrides = _read_yaml(path / layout.OVERRIDES)
    if not isinstance(overrides, list):
        overrides = summary.get("overrides") or []
    config = _read_yaml(path / layout.CONFIG)
    domains = ((config or {}).get("data") or {}).get("domains") if isinstance(config, dict) else None
    if isinstance(domains, dict):
        roles = {name: d.get("role") for name, d in domains.items() if isinstance(d, dict)}
    else:
        roles = {name: d.get("role") for name, d in (summary.get("domains") or {}).items()}
    config = config if isinstance(config, dict) else {}
    seeds = [_value(o) for o in overrides if override_key(str(o)) == SEED_KEY]
    run = Run(path=path, status=status, error=summary.get("error") if status == "failed" else None,
              overrides=[str(o) for o in overrides], roles={k: v for k, v in roles.items() if v},
              summary=summary if status == "completed" else {}, series={},
              seed=_int_or_none(seeds[-1] if seeds else config.get("seed")),
              name=str(summary.get("name") or config.get("name") or path.parent.name),
              replay_ratio=_float_or_none(_known(summary.get("replay_ratio"),
                                                 (config.get("data") or {}).get("replay_ratio"))))
    try:
        run.series = read_series(path)
    except (ValueError, csv.Error, OSError) as err:
        # A CSV being rewritten by a live run can be caught half-written; compare the rest anyway.
        run.warnings.append(f"{path / 'metrics.csv'}: unreadable ({err}); its curves are left out")
    return run


def override_key(override: str) -> str:
    """`data.replay_ratio` for `data.replay_ratio=0.25`, `+x=1`, `++x=1` or `~x`."""
    return override.lstrip("+~").split("=", 1)[0].strip()


def _is_hydra(key: str) -> bool:
    return key == "hydra" or key.startswith(("hydra.", "hydra/"))


def _value_key(override: str | None) -> tuple:
    """Sweep values compare as numbers when they are numbers (0.1 < 0.25 < 0.5)."""
    if override is None:
        return (0,)  # a run without the override (the defaults) comes first
    value = override.split("=", 1)[1] if "=" in override else ""
    try:
        return (1, float(value), "")
    except ValueError:
        return (2, 0.0, value)


SEED_KEY = "seed"


def _int_or_none(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _float_or_none(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def label_and_sort(runs: list[Run]) -> list[Run]:
    """Label each run by the overrides that differ between the runs (hydra.* left out) and return
    them in sweep order: by those overrides' values, key by key in command-line order.

    `seed` is left out of the labels: runs that differ only in it share a `group_label` (the experiment
    name when nothing else tells them apart) and are labelled `<group label> · seed=N` each."""
    per_run = [{override_key(o): o for o in r.overrides if not _is_hydra(override_key(o))} for r in runs]
    keys = list(dict.fromkeys(k for overrides in per_run for k in overrides))
    differing = [k for k in keys if k != SEED_KEY and len({_value(p.get(k)) for p in per_run}) > 1]
    families = [frozenset(v for k, v in p.items() if k != SEED_KEY) for p in per_run]
    seeds: dict[frozenset, list] = {}
    for run, family in zip(runs, families):
        seeds.setdefault(family, []).append(run.seed)
    for run, overrides, family in zip(runs, per_run, families):
        shown = ", ".join(overrides[k] for k in differing if k in overrides)
        seeded = len(set(seeds[family])) > 1  # several seeds of one configuration: one row, a label per seed
        run.group_label = shown or (run.name if seeded else run.path.name)
        if seeded and len(set(seeds[family])) < len(seeds[family]):
            # A seed twice: the same configuration in two sweeps, which stay apart (a row per sweep directory).
            run.group_label = f"{run.group_label} [{run.path.parent.name}]"
        run.label = f"{run.group_label} · seed={run.seed}" if seeded else run.group_label
    counts = Counter(run.label for run in runs)
    for run in runs:
        if counts[run.label] > 1:  # same overrides in two sweeps (or two dirs named alike): say where
            where = f"{run.path.parent.name}/{run.path.name}"
            run.label = where if run.label == run.path.name else f"{run.label} [{where}]"
            run.group_label = run.label  # never pooled with its twin
    order = sorted(range(len(runs)), key=lambda i: ([_value_key(per_run[i].get(k)) for k in differing],
                                                     natural_key(str(runs[i].path))))
    return [runs[i] for i in order]


def _value(override: str | None) -> str | None:
    return None if override is None else override.split("=", 1)[-1].strip()


EMA_PREFIX = "val_ema/"


def ema_view(run: Run) -> Run | None:
    """The run's EMA weights as a run of their own (retention=ema|mean_teacher logs val_ema/*): the same
    run with val_ema/* read as val/*, labelled "· EMA weights"; None when the run has no EMA curves.
    Its delta_bpb is measured from the raw step-0 bpb, as the run logged it."""
    ema = {"val/" + k[len(EMA_PREFIX):]: v for k, v in run.series.items() if k.startswith(EMA_PREFIX)}
    if not ema:
        return None
    series = {k: v for k, v in run.series.items() if not k.startswith(("val/", EMA_PREFIX))} | ema
    summary = {k: v for k, v in run.summary.items() if k != "domains"}  # the domain record is the raw weights'
    return Run(path=run.path, status=run.status, error=run.error, overrides=run.overrides, roles=run.roles,
               summary=summary, series=series, label=f"{run.label} · EMA weights", seed=run.seed, name=run.name,
               replay_ratio=run.replay_ratio, group_label=f"{run.group_label} · EMA weights", view="ema")


def load_runs(paths: list[Path]) -> list[Run]:
    """The runs in sweep order, each followed by its EMA-weights view when it has one."""
    runs = label_and_sort([load_run(p) for p in find_run_dirs(paths)])
    return [view for run in runs for view in (run, ema_view(run)) if view is not None]


@dataclass
class Group:
    """One row of the comparison: the completed runs that differ only in seed (pooled), or one run that
    did not complete (never pooled: its numbers are partial)."""
    label: str
    runs: list[Run]

    @property
    def status(self) -> str:
        return self.runs[0].status

    @property
    def seeds(self) -> list[int | None]:
        return [run.seed for run in self.runs]

    @property
    def replay_ratio(self) -> float | None:
        return self.runs[0].replay_ratio

    @property
    def overrides(self) -> list[str]:
        """Its runs' overrides without seed and hydra.* (the same for every run of the group)."""
        return [o for o in self.runs[0].overrides if override_key(o) != SEED_KEY and not _is_hydra(override_key(o))]


def group_runs(runs: list[Run]) -> list[Group]:
    """The rows, in the runs' (sweep) order: completed runs with the same group label and view pooled;
    a failed or unfinished run a row of its own, labelled with its seed."""
    groups: dict[tuple, Group] = {}
    for i, run in enumerate(runs):
        key = (run.view, run.group_label) if run.status == "completed" else (i,)
        if key not in groups:
            label = run.group_label if run.status == "completed" else run.label
            groups[key] = Group(label=label, runs=[])
        groups[key].runs.append(run)
    for group in groups.values():
        group.runs.sort(key=lambda r: (r.seed is None, r.seed or 0))  # stable: path order among equal seeds
    return list(groups.values())


def parse_domains(values: list[str] | None) -> list[str] | None:
    """`--old en,code --old fr` -> ["en", "code", "fr"]; None when the flag was not given."""
    if values is None:
        return None
    return list(dict.fromkeys(d.strip() for v in values for d in v.split(",") if d.strip()))


def resolve_roles(runs: list[Run], old: list[str] | None = None, new: list[str] | None = None) -> Roles:
    """New = role `new`, old = role `replay` or `eval` (evaluation only: forgetting on text the replay does not
    cover) in the runs' configs, unless given; a domain named in one flag is taken out of the other list."""
    configured: dict[str, str] = {}
    for run in runs:
        for name, role in run.roles.items():
            configured.setdefault(name, role)
    if old and new and set(old) & set(new):
        raise CptlabError(f"--old and --new both name {', '.join(sorted(set(old) & set(new)))}")
    new_list = new if new is not None else [d for d, r in configured.items() if r == "new" and d not in (old or [])]
    old_list = old if old is not None else [d for d, r in configured.items()
                                            if r in ("replay", "eval") and d not in (new or [])]
    known = set().union(*(run.domains() for run in runs))
    unknown = [d for d in new_list + old_list if d not in known]
    if unknown:
        raise CptlabError(f"no run has domain {', '.join(unknown)} "
                          f"(domains seen: {', '.join(sorted(known)) or 'none'})")
    if not new_list and not old_list:
        raise CptlabError("cannot tell old from new domains: no run has data.domains.<D>.role in "
                          ".hydra/config.yaml; pass --old and --new")
    return Roles(new=new_list, old=old_list)


def _eval_record(run: Run, domain: str) -> tuple[str | None, str | None, str | None]:
    """(held-out documents hash, tokenizer hash, eval blocks hash) a completed run recorded for `domain`."""
    s = run.summary
    split = ((s.get("split") or {}).get("domains") or {}).get(domain) or {}
    blocks = ((s.get("domains") or {}).get(domain) or {}).get("eval_blocks_sha256")
    return split.get("heldout_sha256"), (s.get("vocabulary") or {}).get("tokenizer_sha256"), blocks


def _sets(labelled: dict[str, list[str]]) -> str:
    return " vs ".join("{" + ", ".join(dict.fromkeys(labels)) + "}" for labels in labelled.values())


def eval_data_warnings(groups: list[Group], domains: list[str]) -> list[str]:
    """Where the rows were not scored on the same data (cptlab-compare warns; it does not refuse, so
    deliberately different data can still be compared, but the table says so):
    - a row pooling runs whose eval blocks differ (its mean would mix different test sets);
    - rows evaluated on different held-out documents (data.split_seed, heldout or sources differ);
    - rows with the same held-out documents and tokenizer scored on different blocks (data.seq_len or
      eval.max_blocks differ). Different tokenizers cut the same documents into different blocks: expected,
      and bpb compares across them. Runs that did not record these hashes are left out of the checks."""
    warnings = []
    rows = [g for g in groups if g.status == "completed" and g.runs[0].view == "raw"]
    for domain in domains:
        for group in rows:
            hashes = {_eval_record(run, domain)[2] for run in group.runs} - {None}
            if len(hashes) > 1:
                warnings.append(f"{domain}: the runs pooled in row '{group.label}' were scored on {len(hashes)} "
                                "different sets of eval blocks; its mean mixes different test data")
        heldout: dict[str, list[str]] = {}
        blocks: dict[tuple, dict[str, list[str]]] = {}
        for group in rows:
            for run in group.runs:
                docs, tokenizer, block = _eval_record(run, domain)
                if docs is not None:
                    heldout.setdefault(docs, []).append(group.label)
                if block is not None and docs is not None and tokenizer is not None:
                    blocks.setdefault((docs, tokenizer), {}).setdefault(block, []).append(group.label)
        if len(heldout) > 1:
            warnings.append(f"{domain}: rows were evaluated on different held-out documents (data.split_seed, "
                            f"heldout or sources differ): {_sets(heldout)}")
        for labelled in blocks.values():
            if len(labelled) > 1:
                warnings.append(f"{domain}: rows with the same held-out documents and tokenizer were scored on "
                                f"different eval blocks (data.seq_len or eval.max_blocks differ): {_sets(labelled)}")
    return warnings

"""The statistics of cptlab-compare: mean and 95% t-interval over seeds; differences between rows, paired
when they share seeds and Welch otherwise, Holm-Bonferroni-adjusted over a table and read as one of three
verdicts; and the replay-ratio budget (a monotone fit of forgetting against data.replay_ratio, with a
bootstrap over seeds). numpy only: the t quantile is computed here (no scipy)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from cptlab.errors import CptlabError

CONFIDENCE = 0.95


# -- Student's t ----------------------------------------------------------------------------------------


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        for num in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` degrees of freedom (df > 0, not necessarily an integer)."""
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The p-quantile of Student's t (0 < p < 1), by bisection on t_cdf: t_quantile(0.975, 2) = 4.303."""
    if not 0.0 < p < 1.0 or not df > 0:
        raise ValueError(f"t_quantile needs 0 < p < 1 and df > 0, got p={p}, df={df}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


# -- intervals ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Estimate:
    """The mean of n values and the half-width of its 95% t-interval (None when n < 2)."""
    mean: float | None
    ci: float | None
    n: int


def finite(values) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(v)]


def mean_ci(values) -> Estimate:
    """Mean, 95% t-interval half-width (t_{0.975, n-1} * s / sqrt(n)) and n of the finite values."""
    xs = finite(values)
    n = len(xs)
    if n == 0:
        return Estimate(None, None, 0)
    mean = sum(xs) / n
    if n < 2:
        return Estimate(mean, None, 1)
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    return Estimate(mean, t_quantile(0.5 + CONFIDENCE / 2, n - 1) * sd / math.sqrt(n), n)


# -- comparisons of a table: paired or Welch, Holm-adjusted, three verdicts ---------------------------------

ALPHA = 1.0 - CONFIDENCE
# "equivalent" needs the adjusted interval inside +/- this many bits per byte (cptlab-compare --margin).
DEFAULT_MARGIN = 0.01
VERDICTS = ("difference", "equivalent", "inconclusive")


@dataclass
class Comparison:
    """A row minus the reference row on one figure. `method` is "paired" (the rows ran the same seeds, and the
    same seed means the same data order and initialisation in cptlab, so the per-seed differences are the
    sample), "identical" (the same figures seed for seed: not a test, outside the Holm family) or "Welch"
    (otherwise); `se`, `df` and the two-sided `p` are unadjusted. `holm` fills `p_adj`
    (Holm-Bonferroni over the table's comparisons), `ci` (the half-width at the comparison's Holm level) and
    `verdict`."""

    mean: float | None
    se: float | None
    df: float | None
    n: int
    method: str
    p: float | None = None
    p_adj: float | None = None
    ci: float | None = None
    verdict: str | None = None


def _p_two_sided(t: float, df: float) -> float:
    return 2.0 * (1.0 - t_cdf(abs(t), df))


def compare_samples(a: dict, b: dict) -> Comparison:
    """`a` minus `b`, each {seed: value} (finite values only count). Paired when both hold the same two or more
    seeds, Welch otherwise; no interval with a single run on either side. Equal values seed for seed are
    "identical": no p-value, so `holm` leaves them out of the family, and they read "equivalent" (± 0)."""
    xs = {k: float(v) for k, v in a.items() if v is not None and math.isfinite(v)}
    ys = {k: float(v) for k, v in b.items() if v is not None and math.isfinite(v)}
    if not xs or not ys:
        return Comparison(None, None, None, min(len(xs), len(ys)), "-")
    if set(xs) == set(ys) and len(xs) >= 2 and None not in xs:
        diffs = [xs[k] - ys[k] for k in sorted(xs, key=str)]
        n, mean = len(diffs), sum(diffs) / len(diffs)
        if not any(diffs):  # the same runs' figures (an EMA run's raw weights are the plain run's): nothing to test
            return Comparison(0.0, 0.0, n - 1.0, n, "identical", ci=0.0)
        se = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1) / n)
        return _with_p(Comparison(mean, se, n - 1.0, n, "paired"))
    x, y = list(xs.values()), list(ys.values())
    mean = sum(x) / len(x) - sum(y) / len(y)
    if len(x) < 2 or len(y) < 2:
        return Comparison(mean, None, None, min(len(x), len(y)), "n=1")
    vx, vy = (float(np.var(v, ddof=1)) / len(v) for v in (x, y))
    se2 = vx + vy
    df = se2 ** 2 / (vx ** 2 / (len(x) - 1) + vy ** 2 / (len(y) - 1)) if se2 > 0 else len(x) + len(y) - 2.0
    return _with_p(Comparison(mean, math.sqrt(se2), df, min(len(x), len(y)), "Welch"))


def _with_p(c: Comparison) -> Comparison:
    if c.se == 0.0:
        c.p = 0.0 if c.mean != 0 else 1.0
    else:
        c.p = _p_two_sided(c.mean / c.se, c.df)
    return c


def holm(comparisons: list[Comparison], margin: float = DEFAULT_MARGIN, alpha: float = ALPHA) -> list[Comparison]:
    """Holm-Bonferroni over `comparisons` (those with a p-value: m of them), in place. The i-th smallest p is
    tested at alpha / (m - i) until one fails; its adjusted p is the running maximum of (m - j) * p_(j), capped
    at 1, and its interval is the t-interval at level 1 - alpha / (m - i), or at the failing step's level for it
    and every comparison after it, so an interval excludes 0 exactly when the adjusted p is below alpha.
    Verdicts: "difference" when the adjusted p is below alpha; "equivalent" when the adjusted interval lies
    inside +/- `margin` (two one-sided tests at the same level); "inconclusive" otherwise, and always without
    an interval (a single run on a side)."""
    tested = sorted((c for c in comparisons if c.p is not None), key=lambda c: c.p)
    m, running, stopped = len(tested), 0.0, None
    for i, c in enumerate(tested):
        running = max(running, min(1.0, (m - i) * c.p))
        c.p_adj = running
        if stopped is None and c.p >= alpha / (m - i):
            stopped = i  # the step-down stops here: this and every later comparison use this step's level
        level = alpha / (m - (i if stopped is None else stopped))
        c.ci = 0.0 if c.se == 0.0 else t_quantile(1.0 - level / 2.0, c.df) * c.se
    for c in comparisons:
        if c.mean is None:
            c.verdict = None
        elif c.p_adj is not None and c.p_adj < alpha:
            c.verdict = "difference"
        elif c.ci is not None and abs(c.mean) + c.ci < margin:
            c.verdict = "equivalent"
        else:
            c.verdict = "inconclusive"
    return comparisons


def comparison_text(c: Comparison | None, spec: str = "+.4f") -> str:
    """"+0.0312 ± 0.0140 difference" (the Holm-adjusted interval), "+0.0312 (n=1) inconclusive", "-"."""
    if c is None or c.mean is None:
        return "-"
    if c.ci is None:
        return f"{format(c.mean, spec)} (n=1) {c.verdict}"
    return f"{format(c.mean, spec)} ± {c.ci:.4f} {c.verdict}"


# -- the replay-ratio budget ----------------------------------------------------------------------------


def pava_decreasing(y, w) -> np.ndarray:
    """The weighted least-squares non-increasing fit to y (pool adjacent violators)."""
    blocks: list[list[float]] = []  # [weighted mean, weight, count]
    for value, weight in zip(y, w):
        blocks.append([float(value), float(weight), 1])
        while len(blocks) > 1 and blocks[-2][0] < blocks[-1][0]:  # an increase violates: pool
            m2, w2, c2 = blocks.pop()
            m1, w1, c1 = blocks[-1]
            blocks[-1] = [(m1 * w1 + m2 * w2) / (w1 + w2), w1 + w2, c1 + c2]
    return np.array([m for m, _, c in blocks for _ in range(c)])


def crossing(x, f, budget: float) -> float:
    """The smallest x at which the piecewise-linear non-increasing curve (x, f) is <= budget: x[0] when f
    starts within it, inf when it never gets there."""
    budget += 1e-12  # a fit that lands on the budget (up to float rounding) is within it
    if f[0] <= budget:
        return float(x[0])
    for i in range(1, len(x)):
        if f[i] <= budget:
            return float(x[i - 1] + (f[i - 1] - budget) / (f[i - 1] - f[i]) * (x[i] - x[i - 1]))
    return math.inf


def interpolate(x, y, at: float) -> float | None:
    """y at `at` on the piecewise-linear curve (x, y); None outside the swept range."""
    if not math.isfinite(at) or at < x[0] or at > x[-1]:
        return None
    return float(np.interp(at, x, y))


def _percentile(values, q: float) -> float:
    """A percentile that is one of the values (no interpolation: a ratio never reached stays inf)."""
    return float(np.percentile(np.asarray(values, dtype=float), q, method="inverted_cdf"))


@dataclass
class Budget:
    domain: str
    budget: float
    ratios: list[float]  # the swept replay ratios, increasing
    n: list[int]  # seeds at each ratio
    fitted: list[float]  # the monotone (non-increasing) fit of mean forgetting at each ratio
    ratio: float  # the smallest ratio whose fitted forgetting is within budget (inf: none swept is)
    ratio_ci: tuple[float, float] | None  # 2.5/97.5 percentiles over the bootstrap (None with one seed each)
    new_bpb: float | None  # the new domain's bpb expected at that ratio (linear between swept ratios)
    new_bpb_ci: tuple[float, float] | None
    new_bpb_at_min: float | None  # ... and at the smallest swept ratio, for the cost of the replay
    ratio_safe: float | None = None  # the smallest ratio whose forgetting's upper 95% t-bound is within budget


def fit_budget(domain: str, budget: float, points: dict[float, list[tuple[float, float | None]]], *,
               n_boot: int = 2000, seed: int = 0) -> Budget:
    """Fit old-domain forgetting against the replay ratio and find the smallest ratio within `budget`.

    `points` maps each swept ratio to its runs' (forgetting, new-domain bpb). Forgetting is fitted by
    weighted isotonic regression (non-increasing in the ratio; weights = seeds per ratio) on the per-ratio
    means, and read between swept ratios by linear interpolation. The interval resamples the seeds of each
    ratio with replacement (`n_boot` times, a fixed generator: the same output every time) and refits; with
    few seeds it is optimistic, so `ratio_safe` also fits the upper ends of the per-ratio 95% t-intervals
    (mean + half-width) the same way: the ratio at which forgetting is within budget with 95% confidence."""
    ratios = sorted(points)
    forget = [np.array([f for f, _ in points[r]], dtype=float) for r in ratios]
    new = [np.array([b for _, b in points[r] if b is not None], dtype=float) for r in ratios]
    counts = np.array([len(f) for f in forget], dtype=float)
    x = np.array(ratios, dtype=float)

    def solve(forget_means, new_means):
        fitted = pava_decreasing(forget_means, counts)
        at = crossing(x, fitted, budget)
        usable = [i for i, v in enumerate(new_means) if math.isfinite(v)]
        bpb = interpolate(x[usable], np.asarray(new_means)[usable], at) if usable else None
        return fitted, at, bpb

    new_means = [float(v.mean()) if len(v) else math.nan for v in new]
    fitted, at, bpb = solve([float(f.mean()) for f in forget], new_means)
    ratio_ci = bpb_ci = None
    if any(len(f) > 1 for f in forget):
        rng = np.random.default_rng(seed)
        ats, bpbs = [], []
        for _ in range(n_boot):
            picks = [rng.integers(0, len(f), len(f)) for f in forget]
            f_means = [float(f[p].mean()) for f, p in zip(forget, picks)]
            # A run's two numbers are resampled together: the same seeds for forgetting and learning.
            b_means = [float(v[p].mean()) if len(v) == len(f) else (float(v.mean()) if len(v) else math.nan)
                       for v, f, p in zip(new, forget, picks)]
            _, a, b = solve(f_means, b_means)
            ats.append(a)
            if b is not None:
                bpbs.append(b)
        ratio_ci = (_percentile(ats, 2.5), _percentile(ats, 97.5))
        if bpbs and len(bpbs) == len(ats):
            bpb_ci = (_percentile(bpbs, 2.5), _percentile(bpbs, 97.5))
    ratio_safe = None
    if all(len(f) > 1 for f in forget):
        upper = [mean_ci(f).mean + mean_ci(f).ci for f in forget]
        ratio_safe = crossing(x, pava_decreasing(upper, counts), budget)
    return Budget(domain=domain, budget=budget, ratio_safe=ratio_safe, ratios=[float(r) for r in ratios],
                  n=[int(c) for c in counts],
                  fitted=[float(v) for v in fitted], ratio=at, ratio_ci=ratio_ci, new_bpb=bpb, new_bpb_ci=bpb_ci,
                  new_bpb_at_min=new_means[0] if math.isfinite(new_means[0]) else None)


def budget_text(b: Budget, new_domains: str = "new") -> str:
    """One line: the ratio the budget needs, its interval, and what it costs the new domain."""
    head = f"{b.domain} forgetting <= {b.budget:g} bpb"
    if not math.isfinite(b.ratio):
        return (f"{head}: no swept data.replay_ratio gets there (fitted forgetting at the highest, "
                f"{b.ratios[-1]:g}: {b.fitted[-1]:+.4f}); sweep higher ratios")

    def ratio_range(lo: float, hi: float) -> str:
        return f"{lo:.3f}-{hi:.3f}" if math.isfinite(hi) else f"{lo:.3f} to beyond {b.ratios[-1]:g}"

    line = f"{head}: data.replay_ratio >= {b.ratio:.3f}"
    line += (f" (95% CI {ratio_range(*b.ratio_ci)}, bootstrap over seeds)" if b.ratio_ci
             else " (one run per ratio: no interval)")
    if b.ratio_safe is not None:
        line += (f", >= {b.ratio_safe:.3f} for its upper 95% bound" if math.isfinite(b.ratio_safe)
                 else f", its upper 95% bound beyond {b.ratios[-1]:g}")
    if b.new_bpb is not None:
        line += f"; {new_domains} bpb there {b.new_bpb:.4f}"
        if b.new_bpb_ci:
            line += f" (95% CI {b.new_bpb_ci[0]:.4f}-{b.new_bpb_ci[1]:.4f})"
        if b.new_bpb_at_min is not None:
            line += f", {b.new_bpb - b.new_bpb_at_min:+.4f} vs data.replay_ratio={b.ratios[0]:g}"
    return line


def parse_budgets(values: list[str] | None) -> dict[str, float]:
    """`--budget en=0.05 --budget code=0.1` (or "en=0.05,code=0.1") -> {"en": 0.05, "code": 0.1}."""
    out: dict[str, float] = {}
    for item in (part.strip() for value in values or () for part in value.split(",")):
        if not item:
            continue
        domain, sep, amount = item.partition("=")
        try:
            out[domain.strip()] = float(amount)
        except ValueError:
            sep = ""
        if not sep or not domain.strip():
            raise CptlabError(f"--budget {item!r}: expected DOMAIN=MAX_FORGETTING, e.g. en=0.05")
    return out


def replay_budgets(groups, roles, budgets: dict[str, float]) -> list[tuple[str, Budget]]:
    """For each budget (old domain -> largest acceptable Δbpb at the end) and each family of completed
    rows that differ only in data.replay_ratio (the other overrides equal): the fit of fit_budget.
    Returns (family label, Budget) pairs; the family label is empty when there is one family."""
    from cptlab.compare.runs import override_key

    for domain in budgets:
        if domain not in roles.old:
            raise CptlabError(f"--budget {domain}: not an old domain of these runs "
                              f"(old: {', '.join(roles.old) or 'none'}; see --old)")
    families: dict[frozenset, dict[float, list]] = {}
    for group in groups:
        if group.status != "completed" or group.runs[0].view != "raw" or group.replay_ratio is None:
            continue
        rest = frozenset(o for o in group.overrides if override_key(o) != "data.replay_ratio")
        families.setdefault(rest, {}).setdefault(float(group.replay_ratio), []).extend(group.runs)
    swept = {k: v for k, v in families.items() if len(v) >= 2}
    if not swept:
        raise CptlabError("--budget needs completed runs at two or more values of data.replay_ratio "
                          "(the other overrides equal)")
    common = frozenset.intersection(*swept) if len(swept) > 1 else None
    out = []
    for rest, by_ratio in swept.items():
        label = ", ".join(sorted(rest - common)) if common is not None else ""
        for domain, budget in budgets.items():
            points = {}
            for ratio, runs in by_ratio.items():
                pairs = []
                for run in runs:
                    forgetting = run.domain_bpb(domain)["delta_bpb"]
                    news = [run.domain_bpb(d)["bpb_end"] for d in roles.new]
                    new = sum(news) / len(news) if news and None not in news else None
                    if forgetting is not None and math.isfinite(forgetting):
                        pairs.append((forgetting, new))
                if pairs:
                    points[ratio] = pairs
            if len(points) >= 2:
                out.append((label, fit_budget(domain, budget, points)))
    return out

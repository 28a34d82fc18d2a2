"""The statistics of cptlab-compare against textbook values: the t quantile, the t- and Welch intervals,
paired vs Welch differences, Holm's correction and the three verdicts, the monotone fit and the replay-ratio
budget."""

import math

import pytest

from cptlab.compare.stats import (
    Comparison,
    Estimate,
    compare_samples,
    comparison_text,
    crossing,
    fit_budget,
    holm,
    mean_ci,
    parse_budgets,
    pava_decreasing,
    t_cdf,
    t_quantile,
)
from cptlab.errors import CptlabError


@pytest.mark.parametrize("df, expected", [(1, 12.7062), (2, 4.3027), (3, 3.1824), (4, 2.7764), (9, 2.2622),
                                          (29, 2.0452), (1000, 1.9623)])
def test_t_quantile_matches_the_tables(df, expected):
    assert t_quantile(0.975, df) == pytest.approx(expected, abs=1e-4)
    assert t_quantile(0.025, df) == pytest.approx(-expected, abs=1e-4)
    assert t_quantile(0.5, df) == pytest.approx(0.0, abs=1e-9)


def test_t_quantile_rejects_bad_arguments():
    for p, df in ((0.0, 3), (1.0, 3), (0.9, 0)):
        with pytest.raises(ValueError):
            t_quantile(p, df)


def test_mean_ci_by_hand():
    est = mean_ci([1.0, 2.0, 3.0])  # s = 1, n = 3: 4.3027 / sqrt(3)
    assert (est.mean, est.n) == (2.0, 3) and est.ci == pytest.approx(4.302653 / math.sqrt(3), rel=1e-5)
    assert mean_ci([5.0]) == Estimate(5.0, None, 1)
    assert mean_ci([None, float("nan")]) == Estimate(None, None, 0)
    assert mean_ci([2.0, 2.0]).ci == 0.0


def test_welch_difference_by_hand():
    a, b = [1.0, 2.0, 3.0], [2.0, 4.0, 6.0, 8.0]
    d = compare_samples(dict(enumerate(b)), {f"s{i}": v for i, v in enumerate(a)})  # other seeds: Welch
    va, vb = 1.0 / 3, (20.0 / 3) / 4  # variance / n
    df = (va + vb) ** 2 / (va ** 2 / 2 + vb ** 2 / 3)
    assert (d.method, d.mean, d.n) == ("Welch", pytest.approx(3.0), 3)
    assert d.se == pytest.approx(math.sqrt(va + vb)) and d.df == pytest.approx(df)
    assert d.p == pytest.approx(2 * (1 - t_cdf(3.0 / math.sqrt(va + vb), df)))
    holm([d])  # one comparison: the plain 95% interval
    assert d.ci == pytest.approx(t_quantile(0.975, df) * math.sqrt(va + vb))
    single = compare_samples({0: 1.0}, dict(enumerate(a)))
    assert (single.method, single.se, single.p) == ("n=1", None, None)
    assert compare_samples({}, dict(enumerate(a))).mean is None


def test_paired_and_welch_intervals_differ_on_a_known_case():
    # Seeds move both rows together (data order, init): the per-seed differences are 0.10, 0.11, 0.12.
    ref = {0: 1.00, 1: 1.50, 2: 2.00}
    row = {0: 1.10, 1: 1.61, 2: 2.12}
    paired = compare_samples(row, ref)
    assert paired.method == "paired" and paired.mean == pytest.approx(0.11) and paired.df == 2
    assert paired.se == pytest.approx(0.01 / math.sqrt(3))
    welch = compare_samples(row, {f"other{k}": v for k, v in ref.items()})
    assert welch.method == "Welch" and welch.mean == pytest.approx(0.11)
    holm([paired]), holm([welch])
    assert paired.ci == pytest.approx(t_quantile(0.975, 2) * 0.01 / math.sqrt(3))  # 0.0248: excludes 0
    assert welch.ci > 1.0  # the seed-to-seed spread (0.5) swamps it
    assert (paired.verdict, welch.verdict) == ("difference", "inconclusive")


def test_holm_flips_a_verdict_that_one_test_alone_would_call_a_difference():
    # p = 0.03 alone is a difference at 0.05; as the larger of two comparisons (the other p = 0.001) it is
    # tested at 0.05 / 1 after the first passes at 0.05 / 2: still a difference. With three comparisons whose
    # p-values are 0.03, 0.03, 0.03, Holm tests the smallest at 0.05 / 3: none passes.
    def comparison(p):
        # a difference with df = 4 whose two-sided p is `p`
        se = 0.01
        return Comparison(t_quantile(1 - p / 2, 4) * se, se, 4.0, 5, "paired", p=p)

    alone = holm([comparison(0.03)])[0]
    assert alone.verdict == "difference" and alone.p_adj == pytest.approx(0.03)
    three = holm([comparison(0.03) for _ in range(3)])
    assert [c.verdict for c in three] == ["inconclusive"] * 3
    assert [c.p_adj for c in three] == [pytest.approx(0.09)] * 3
    assert all(c.ci > abs(c.mean) for c in three)  # the adjusted interval holds 0
    pair = holm([comparison(0.001), comparison(0.03)])
    assert [c.verdict for c in pair] == ["difference", "difference"]
    assert [c.p_adj for c in pair] == [pytest.approx(0.002), pytest.approx(0.03)]


def test_a_row_identical_to_the_reference_is_not_a_test_and_leaves_the_family():
    # An EMA run's raw weights train exactly as the run without EMA: its figures equal the reference's seed for
    # seed. Counted as a test (p = 1) it would double Holm's m and halve the level of the real comparison.
    ref = {0: 1.00, 1: 1.50, 2: 2.00}
    same = compare_samples(dict(ref), ref)
    assert (same.method, same.mean, same.ci, same.p) == ("identical", 0.0, 0.0, None)
    real = compare_samples({0: 1.10, 1: 1.61, 2: 2.12}, ref)
    holm([same, real])
    assert real.p_adj == pytest.approx(real.p)  # a family of one
    assert same.verdict == "equivalent" and comparison_text(same) == "+0.0000 ± 0.0000 equivalent"
    near = compare_samples({0: 1.00, 1: 1.50, 2: 2.0001}, ref)
    assert near.method == "paired" and near.p is not None  # any difference at all is tested


def test_equivalent_needs_the_adjusted_interval_inside_the_margin():
    tight = Comparison(0.001, 0.001, 10.0, 11, "paired", p=0.34)
    loose = Comparison(0.001, 0.02, 10.0, 11, "paired", p=0.96)
    holm([tight, loose], margin=0.01)
    assert tight.verdict == "equivalent" and abs(tight.mean) + tight.ci < 0.01
    assert loose.verdict == "inconclusive"
    assert holm([Comparison(0.001, 0.001, 10.0, 11, "paired", p=0.34)], margin=0.003)[0].verdict == "inconclusive"
    assert comparison_text(tight).endswith(" equivalent") and comparison_text(None) == "-"
    single = holm([Comparison(0.05, None, None, 1, "n=1")])[0]
    assert single.verdict == "inconclusive" and comparison_text(single) == "+0.0500 (n=1) inconclusive"


def test_pava_is_the_non_increasing_least_squares_fit():
    assert list(pava_decreasing([3.0, 1.0, 2.0, 0.5], [1, 1, 1, 1])) == [3.0, 1.5, 1.5, 0.5]
    assert list(pava_decreasing([1.0, 2.0], [3, 1])) == [1.25, 1.25]  # weighted by the runs at each ratio
    assert list(pava_decreasing([4.0, 3.0, 1.0], [1, 1, 1])) == [4.0, 3.0, 1.0]  # already monotone
    assert crossing([0.0, 0.5, 1.0], [0.2, 0.1, 0.0], 0.05) == pytest.approx(0.75)
    assert crossing([0.0, 0.5], [0.01, 0.0], 0.05) == 0.0
    assert crossing([0.0, 0.5], [0.2, 0.1], 0.05) == math.inf


def test_budget_recovers_the_ratio_of_a_known_curve():
    # forgetting = 0.2 - 0.3 r, new bpb = 2 + 0.2 r; seeds at -d, 0, +d: within 0.05 from r = 0.5 on.
    points = {r: [(0.2 - 0.3 * r + d, 2.0 + 0.2 * r + d) for d in (-0.01, 0.0, 0.01)] for r in (0.0, 0.25, 0.5, 0.75)}
    fit = fit_budget("en", 0.05, points)
    assert fit.ratio == pytest.approx(0.5)
    assert fit.ratio_ci[0] < 0.5 < fit.ratio_ci[1] and fit.ratio_ci[1] - fit.ratio_ci[0] < 0.15
    assert fit.new_bpb == pytest.approx(2.1) and fit.new_bpb_at_min == pytest.approx(2.0)
    # Within budget with 95% confidence: the upper t-bounds 0.2 - 0.3 r + 4.303 * 0.01 / sqrt(3) reach 0.05 later.
    assert fit.ratio_safe == pytest.approx((0.15 + t_quantile(0.975, 2) * 0.01 / math.sqrt(3)) / 0.3)
    assert fit_budget("en", 0.05, points) == fit  # a fixed bootstrap generator: the same answer every time
    # A noisy, non-monotone middle point is pooled by the monotone fit rather than followed.
    bumpy = dict(points) | {0.25: [(0.22, 2.05)]}
    # (3 runs at 0.2 + 1 at 0.22) / 4: pooled, weighted by the runs at each ratio
    assert fit_budget("en", 0.05, bumpy).fitted[:2] == pytest.approx([0.205, 0.205], abs=1e-9)
    assert fit_budget("en", 0.0, points).ratio == pytest.approx(2 / 3)
    assert fit_budget("en", -0.5, points).ratio == math.inf


def test_parse_budgets():
    assert parse_budgets(["en=0.05", "code=0.1,fr=0"]) == {"en": 0.05, "code": 0.1, "fr": 0.0}
    assert parse_budgets(None) == {}
    for bad in ("en", "en=abc", "=0.1"):
        with pytest.raises(CptlabError, match="expected DOMAIN=MAX_FORGETTING"):
            parse_budgets([bad])

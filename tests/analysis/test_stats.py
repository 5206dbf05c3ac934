"""Intervals, tests, Holm, bootstrap and MDD: on hand-computed numbers and against scipy."""

import math

import numpy as np
import pytest
from scipy import stats

from attnlab.analysis.stats import (bootstrap_mean_ci, compare, holm, mean_ci, minimum_detectable_difference,
                                    paired_test, welch_test)


def test_mean_ci_matches_the_textbook_formula_and_scipy():
    interval = mean_ci([1.0, 2.0, 3.0, 4.0, 5.0], 0.95)
    # s = sqrt(2.5), t_{0.975, 4} = 2.776445
    assert interval.n == 5 and interval.mean == 3.0
    assert interval.half_width == pytest.approx(2.776445 * math.sqrt(2.5) / math.sqrt(5), rel=1e-6)
    low, high = stats.t.interval(0.95, 4, loc=3.0, scale=stats.sem([1, 2, 3, 4, 5]))
    assert (interval.low, interval.high) == (pytest.approx(low), pytest.approx(high))
    assert mean_ci([1.0, 2.0, 3.0, 4.0, 5.0], 0.99).half_width > interval.half_width


def test_one_value_has_no_interval_and_missing_values_are_ignored():
    assert mean_ci([4.2]).half_width is None and mean_ci([4.2]).mean == 4.2
    assert mean_ci([4.2, None, float("nan")]).n == 1
    assert mean_ci([]).n == 0
    with pytest.raises(ValueError, match="confidence must be in \\(0, 1\\), got 95"):
        mean_ci([1.0, 2.0], 95)


def test_welch_test_on_the_known_example():
    # Welch's t-test, example 1 of the Wikipedia article: t = -2.46, df = 24.99, p = 0.021.
    a = [27.5, 21.0, 19.0, 23.6, 17.0, 17.9, 16.9, 20.1, 21.9, 22.6, 23.1, 19.6, 19.0, 21.7, 21.4]
    b = [27.1, 22.0, 20.8, 23.4, 23.4, 23.5, 25.8, 22.0, 24.8, 20.2, 21.9, 22.1, 22.9, 20.5, 24.4]
    test = welch_test(a, b)
    assert test.t == pytest.approx(-2.46, abs=0.005)
    assert test.df == pytest.approx(24.99, abs=0.005)
    assert test.p_value == pytest.approx(0.021, abs=0.0005)
    assert test.difference == pytest.approx(np.mean(a) - np.mean(b))
    reference = stats.ttest_ind(a, b, equal_var=False)
    assert (test.t, test.p_value) == (pytest.approx(reference.statistic), pytest.approx(reference.pvalue))
    assert test.significant(0.05) is True and test.significant(0.01) is False


def test_welch_test_needs_two_values_per_side():
    test = welch_test([4.0], [4.1, 4.2])
    assert (test.t, test.p_value, test.significant(0.05)) == (None, None, None)
    assert test.difference == pytest.approx(-0.15)


def test_welch_interval_is_the_difference_plus_minus_t_times_its_standard_error():
    a, b = [4.0, 4.2, 4.4], [4.5, 4.6]
    test = welch_test(a, b, 0.95)
    se = math.sqrt(np.var(a, ddof=1) / 3 + np.var(b, ddof=1) / 2)
    assert test.half_width == pytest.approx(stats.t.ppf(0.975, test.df) * se)


# Three seed-pairs, differences d = a - b = (-0.10, -0.15, -0.05): mean -0.10, sd 0.05, n = 3, so
# t = -0.10 / (0.05 / sqrt(3)) = -2 sqrt(3) with 2 degrees of freedom, where the t distribution has
# a closed form: P(|T| > |t|) = 1 - |t| / sqrt(2 + t^2) and t_q = (2q - 1) / sqrt(2 q (1 - q)).
PAIRED_A = [4.10, 4.00, 4.30]
PAIRED_B = [4.20, 4.15, 4.35]


def t2_quantile(q: float) -> float:
    return (2 * q - 1) / math.sqrt(2 * q * (1 - q))


def test_paired_t_on_three_pairs_computed_by_hand():
    test = paired_test(PAIRED_A, PAIRED_B, 0.95)
    se = 0.05 / math.sqrt(3)
    assert (test.n, test.df) == (3, 2)
    assert test.difference == pytest.approx(-0.10)
    assert test.sd == pytest.approx(0.05)
    assert test.t == pytest.approx(-2 * math.sqrt(3))
    assert test.p_value == pytest.approx(1 - math.sqrt(12 / 14))  # 0.0741799
    assert t2_quantile(0.975) == pytest.approx(4.302653, rel=1e-6)
    assert test.half_width == pytest.approx(t2_quantile(0.975) * se)
    # The same from the definition with numpy, and scipy's own paired test.
    d = np.subtract(PAIRED_A, PAIRED_B)
    assert test.t == pytest.approx(d.mean() / (d.std(ddof=1) / math.sqrt(d.size)))
    reference = stats.ttest_rel(PAIRED_A, PAIRED_B)
    assert (test.t, test.p_value) == (pytest.approx(reference.statistic), pytest.approx(reference.pvalue))
    assert test.significant(0.05) is False and test.significant(0.1) is True


def test_paired_t_edge_cases():
    assert paired_test([4.0], [4.1]).p_value is None  # one pair: no spread
    assert paired_test([4.0, 4.1, None], [4.1, 4.2, 4.0]).n == 2  # a pair missing a side is dropped
    shifted = paired_test([4.0, 4.5], [4.25, 4.75])  # the same difference (exactly -0.25) every seed: sd 0
    assert (shifted.t, shifted.p_value, shifted.half_width) == (-math.inf, 0.0, 0.0)
    with pytest.raises(ValueError, match="equal lengths"):
        paired_test([1.0, 2.0], [1.0])


def test_holm_on_known_p_values():
    # sorted 0.005, 0.01, 0.03, 0.04 -> 4 x 0.005 = 0.02; 3 x 0.01 = 0.03; 2 x 0.03 = 0.06;
    # 1 x 0.04 = 0.04, raised to the running maximum 0.06; returned in the input order.
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])  # 2 x 0.5 = 1.0 caps at 1; 0.6 -> max(1.0, 0.6)
    assert holm([0.02, None, 0.04]) == [pytest.approx(0.04), None, pytest.approx(0.04)]  # None: not counted
    assert holm([0.03]) == [0.03] and holm([]) == []


def test_bootstrap_is_deterministic_and_contains_the_mean():
    d = [-0.10, -0.15, -0.05, -0.12, -0.02, -0.09, -0.11, -0.07]
    first = bootstrap_mean_ci(d, 0.95, resamples=10_000, seed=0)
    assert first == bootstrap_mean_ci(d, 0.95, resamples=10_000, seed=0)
    assert first != bootstrap_mean_ci(d, 0.95, resamples=10_000, seed=1)
    low, high = first
    assert min(d) < low < np.mean(d) < high < max(d)
    assert high - low < 2 * mean_ci(d).half_width  # about the t interval's width (narrower with few values)
    assert bootstrap_mean_ci([1.0]) is None
    # Three values: all three resampled equal to the smallest has probability 1/27 > 2.5%, so the
    # 95% percentile interval is exactly [min, max] (for any RNG seed).
    three = np.subtract(PAIRED_A, PAIRED_B)
    assert bootstrap_mean_ci(three, 0.95, seed=5) == (pytest.approx(-0.15), pytest.approx(-0.05))
    # Two values 0 and 1: resampled means are 0, 0.5, 1 with probability 1/4, 1/2, 1/4.
    assert bootstrap_mean_ci([0.0, 1.0], 0.95, resamples=10_000, seed=3) == (0.0, 1.0)
    assert bootstrap_mean_ci([0.0, 1.0], 0.40, resamples=10_000, seed=3) == (0.5, 0.5)
    with pytest.raises(ValueError, match="resamples must be >= 1"):
        bootstrap_mean_ci(d, resamples=0)


def test_minimum_detectable_difference_is_the_formula():
    # (t_{0.975, 2} + t_{0.8, 2}) * 0.05 / sqrt(3) = (4.302653 + 1.060660) * 0.0288675 = 0.154826
    mdd = minimum_detectable_difference(0.05, 3, alpha=0.05, power=0.8)
    assert mdd == pytest.approx((t2_quantile(0.975) + t2_quantile(0.8)) * 0.05 / math.sqrt(3))
    assert mdd == pytest.approx(0.154826, rel=1e-5)
    assert minimum_detectable_difference(0.05, 3, power=0.9) > mdd
    assert minimum_detectable_difference(0.05, 12) < mdd  # more seeds resolve smaller differences
    assert minimum_detectable_difference(None, 3) is None and minimum_detectable_difference(0.05, 1) is None


def test_compare_pairs_by_seed_when_two_are_shared_else_welch():
    reference = {0: 4.20, 1: 4.15, 2: 4.35}
    paired = compare({0: 4.10, 1: 4.00, 2: 4.30, 7: 3.0}, reference)  # seed 7 has no partner
    assert (paired.test, paired.seeds, paired.n, paired.n_reference) == ("paired", (0, 1, 2), 4, 3)
    assert paired.p_value == pytest.approx(paired_test(PAIRED_A, PAIRED_B).p_value)
    assert paired.low < paired.bootstrap_low <= paired.difference <= paired.bootstrap_high < paired.high
    assert paired.sd_difference == pytest.approx(0.05) and not paired.sd_difference_assumed
    assert paired.mdd == pytest.approx(0.154826, rel=1e-5)
    assert paired.sd_reference == pytest.approx(np.std([4.20, 4.15, 4.35], ddof=1))

    unpaired = compare({10: 4.10, 11: 4.00}, reference)  # no shared seed
    assert (unpaired.test, unpaired.seeds, unpaired.bootstrap_low) == ("welch", (), None)
    assert unpaired.p_value == pytest.approx(welch_test([4.10, 4.00], [4.20, 4.15, 4.35]).p_value)
    # sd of differences unknown: assumed reference sd * sqrt(2), n = the smaller side (2)
    assumed = np.std([4.20, 4.15, 4.35], ddof=1) * math.sqrt(2)
    assert unpaired.sd_difference_assumed and unpaired.sd_difference == pytest.approx(assumed)
    assert unpaired.mdd == pytest.approx(minimum_detectable_difference(assumed, 2))
    assert compare({0: 4.1, 5: 4.0}, reference).test == "welch"  # one shared seed is not a pairing

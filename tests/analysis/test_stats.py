"""The interval and the test, on known numbers and against scipy."""

import math

import numpy as np
import pytest
from scipy import stats

from attnlab.analysis.stats import mean_ci, welch_test


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

"""Intervals and tests over seeds: the only statistics the tables and figures use."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class Interval:
    """Mean of n values with a two-sided Student-t confidence interval (None when n < 2)."""

    n: int
    mean: float
    half_width: float | None  # None: one value has no spread to estimate

    @property
    def low(self) -> float | None:
        return None if self.half_width is None else self.mean - self.half_width

    @property
    def high(self) -> float | None:
        return None if self.half_width is None else self.mean + self.half_width


@dataclass(frozen=True)
class WelchTest:
    """Welch's unequal-variance t-test of mean(a) - mean(b); None fields when a side has n < 2."""

    n_a: int
    n_b: int
    difference: float  # mean(a) - mean(b)
    t: float | None
    df: float | None  # Welch-Satterthwaite degrees of freedom
    p_value: float | None

    def significant(self, alpha: float) -> bool | None:
        return None if self.p_value is None else self.p_value < alpha


def _clean(values) -> np.ndarray:
    array = np.asarray([v for v in values if v is not None], dtype=float)
    return array[np.isfinite(array)]


def mean_ci(values, confidence: float = 0.95) -> Interval:
    """Mean and Student-t interval: mean +- t_{(1+c)/2, n-1} * s / sqrt(n)."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    x = _clean(values)
    if x.size == 0:
        return Interval(0, math.nan, None)
    if x.size == 1:
        return Interval(1, float(x[0]), None)
    sem = x.std(ddof=1) / math.sqrt(x.size)
    return Interval(int(x.size), float(x.mean()),
                    float(stats.t.ppf((1 + confidence) / 2, x.size - 1) * sem))


def welch_test(a, b) -> WelchTest:
    """Two-sided Welch t-test (scipy's ``ttest_ind(equal_var=False)``), n >= 2 on both sides."""
    x, y = _clean(a), _clean(b)
    difference = float(x.mean() - y.mean()) if x.size and y.size else math.nan
    if x.size < 2 or y.size < 2:
        return WelchTest(int(x.size), int(y.size), difference, None, None, None)
    result = stats.ttest_ind(x, y, equal_var=False)
    vx, vy = x.var(ddof=1) / x.size, y.var(ddof=1) / y.size
    df = (vx + vy) ** 2 / (vx**2 / (x.size - 1) + vy**2 / (y.size - 1)) if vx + vy > 0 else math.nan
    return WelchTest(int(x.size), int(y.size), difference, float(result.statistic), float(df),
                     float(result.pvalue))

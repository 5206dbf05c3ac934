"""Intervals and tests over seeds: the only statistics the tables and figures use.

Two designs compare a variant with the reference variant:

- paired (the two share >= 2 seeds): runs with the same seed see the same data order
  and the same initialisation of the parameters they share, so the per-seed
  differences d_i = a_i - b_i carry less noise than either side. ``paired_test``
  (Student t on d), ``bootstrap_mean_ci`` (percentile bootstrap over the pairs);
- unpaired (different seed sets): ``welch_test``.

``holm`` corrects p-values for the number of variants compared, and
``minimum_detectable_difference`` says how small a difference the current number
of seeds can resolve.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
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
    half_width: float | None = None  # of the confidence interval of the difference

    def significant(self, alpha: float) -> bool | None:
        return None if self.p_value is None else self.p_value < alpha


@dataclass(frozen=True)
class PairedTest:
    """Paired t-test of the mean of d_i = a_i - b_i over n pairs; None fields when n < 2."""

    n: int
    difference: float  # mean of the differences
    sd: float | None  # their standard deviation (n - 1 denominator)
    t: float | None
    df: int | None  # n - 1
    p_value: float | None
    half_width: float | None  # t_{(1+c)/2, n-1} * sd / sqrt(n)

    def significant(self, alpha: float) -> bool | None:
        return None if self.p_value is None else self.p_value < alpha


def _clean(values) -> np.ndarray:
    array = np.asarray([v for v in values if v is not None], dtype=float)
    return array[np.isfinite(array)]


def _check_level(name: str, value: float) -> None:
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be in (0, 1), got {value}")


def sample_sd(values) -> float | None:
    """Standard deviation with the n - 1 denominator; None below two values."""
    x = _clean(values)
    return float(x.std(ddof=1)) if x.size >= 2 else None


def mean_ci(values, confidence: float = 0.95) -> Interval:
    """Mean and Student-t interval: mean +- t_{(1+c)/2, n-1} * s / sqrt(n)."""
    _check_level("confidence", confidence)
    x = _clean(values)
    if x.size == 0:
        return Interval(0, math.nan, None)
    if x.size == 1:
        return Interval(1, float(x[0]), None)
    sem = x.std(ddof=1) / math.sqrt(x.size)
    return Interval(int(x.size), float(x.mean()),
                    float(stats.t.ppf((1 + confidence) / 2, x.size - 1) * sem))


def welch_test(a, b, confidence: float = 0.95) -> WelchTest:
    """Two-sided Welch t-test (scipy's ``ttest_ind(equal_var=False)``), n >= 2 on both sides.

    Interval: difference +- t_{(1+c)/2, df} * sqrt(s_a^2/n_a + s_b^2/n_b), df Welch-Satterthwaite.
    """
    _check_level("confidence", confidence)
    x, y = _clean(a), _clean(b)
    difference = float(x.mean() - y.mean()) if x.size and y.size else math.nan
    if x.size < 2 or y.size < 2:
        return WelchTest(int(x.size), int(y.size), difference, None, None, None)
    result = stats.ttest_ind(x, y, equal_var=False)
    vx, vy = x.var(ddof=1) / x.size, y.var(ddof=1) / y.size
    df = (vx + vy) ** 2 / (vx**2 / (x.size - 1) + vy**2 / (y.size - 1)) if vx + vy > 0 else math.nan
    half_width = float(stats.t.ppf((1 + confidence) / 2, df) * math.sqrt(vx + vy)) if vx + vy > 0 else 0.0
    return WelchTest(int(x.size), int(y.size), difference, float(result.statistic), float(df),
                     float(result.pvalue), half_width)


def paired_test(a, b, confidence: float = 0.95) -> PairedTest:
    """Two-sided paired t-test on d_i = a_i - b_i (a and b aligned: pair i is a[i], b[i]).

    t = mean(d) / (sd(d) / sqrt(n)) with n - 1 degrees of freedom; p = 2 P(T > |t|);
    interval: mean(d) +- t_{(1+c)/2, n-1} * sd(d) / sqrt(n). A pair with a missing value
    on either side is dropped. Differences without spread give t = +-inf and p = 0
    (or t = 0, p = 1 when they are all zero), as the limit of the formula.
    """
    _check_level("confidence", confidence)
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired values need equal lengths, got {a.size} and {b.size}")
    d = (a - b)[np.isfinite(a) & np.isfinite(b)]
    n = int(d.size)
    difference = float(d.mean()) if n else math.nan
    if n < 2:
        return PairedTest(n, difference, None, None, None, None, None)
    sd = float(d.std(ddof=1))
    se = sd / math.sqrt(n)
    if se > 0:
        t = difference / se
        p_value = float(2 * stats.t.sf(abs(t), n - 1))
    else:
        t = 0.0 if difference == 0 else math.copysign(math.inf, difference)
        p_value = 1.0 if difference == 0 else 0.0
    return PairedTest(n, difference, sd, float(t), n - 1, p_value,
                      float(stats.t.ppf((1 + confidence) / 2, n - 1) * se))


def bootstrap_mean_ci(values, confidence: float = 0.95, resamples: int = 10_000,
                      seed: int = 0) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the mean: resample the values with replacement.

    For paired differences this resamples seed-pairs. ``resamples`` means of n values
    drawn with ``numpy.random.default_rng(seed)``; the interval is their (1-c)/2 and
    (1+c)/2 quantiles. Deterministic for a fixed seed; None below two values. With a
    handful of values it has few distinct resamples and is narrower than the t interval.
    """
    _check_level("confidence", confidence)
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    x = _clean(values)
    if x.size < 2:
        return None
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(resamples, x.size))].mean(axis=1)
    low, high = np.quantile(means, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(low), float(high)


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values, in the input order (None stays None, not counted).

    With the m p-values sorted p_(1) <= ... <= p_(m): adjusted p_(i) =
    max_{j <= i} min(1, (m - j + 1) p_(j)). Rejecting where adjusted p < alpha controls
    the family-wise error rate at alpha.
    """
    present = [(p, i) for i, p in enumerate(p_values) if p is not None and not math.isnan(p)]
    adjusted: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(sorted(present)):
        running = max(running, min(1.0, (len(present) - rank) * p))
        adjusted[i] = running
    return adjusted


def minimum_detectable_difference(sd_difference: float | None, n: int, alpha: float = 0.05,
                                  power: float = 0.8) -> float | None:
    """The smallest true mean difference a two-sided paired t-test detects with ``power``.

    MDD = (t_{1-alpha/2, n-1} + t_{power, n-1}) * sd_diff / sqrt(n), the usual
    approximation with central t quantiles. None when n < 2 or sd_diff is unknown.
    """
    _check_level("alpha", alpha)
    _check_level("power", power)
    if sd_difference is None or n < 2:
        return None
    quantiles = stats.t.ppf(1 - alpha / 2, n - 1) + stats.t.ppf(power, n - 1)
    return float(quantiles * sd_difference / math.sqrt(n))


@dataclass(frozen=True)
class Comparison:
    """One variant against the reference on one metric: the test the design allows, and its power."""

    test: str  # "paired" or "welch"
    n: int  # the variant's seeds
    n_reference: int  # the reference's seeds
    seeds: tuple[int, ...]  # the shared seeds a paired test uses (empty for Welch)
    difference: float  # variant - reference: mean of the paired differences, or of the means
    low: float | None  # t interval (paired t, or Welch)
    high: float | None
    bootstrap_low: float | None  # paired rows only
    bootstrap_high: float | None
    t: float | None
    df: float | None
    p_value: float | None
    sd_reference: float | None  # the reference's seed-to-seed sd: the noise floor
    sd_difference: float | None  # observed (paired) or assumed (sd_reference * sqrt(2))
    sd_difference_assumed: bool
    mdd: float | None  # minimum detectable difference at this n

    @property
    def n_pairs(self) -> int:
        return len(self.seeds)


def compare(variant: Mapping[int, float], reference: Mapping[int, float], confidence: float = 0.95,
            alpha: float = 0.05, power: float = 0.8, resamples: int = 10_000,
            bootstrap_seed: int = 0) -> Comparison:
    """``variant`` against ``reference`` (seed -> value): paired by seed when >= 2 seeds are shared.

    Paired: paired t and percentile bootstrap over the shared seeds, MDD from the observed
    sd of the differences with n = pairs. Welch: every seed of both sides, MDD with the
    sd of differences unknown, assumed sd_reference * sqrt(2) (two independent runs of the
    reference's spread), n = the smaller side's seed count.
    """
    a = {s: float(v) for s, v in variant.items() if v is not None and math.isfinite(v)}
    b = {s: float(v) for s, v in reference.items() if v is not None and math.isfinite(v)}
    shared = tuple(sorted(set(a) & set(b)))
    sd_reference = sample_sd(list(b.values()))
    common = dict(n=len(a), n_reference=len(b), sd_reference=sd_reference)
    if len(shared) >= 2:
        test = paired_test([a[s] for s in shared], [b[s] for s in shared], confidence)
        boot = bootstrap_mean_ci([a[s] - b[s] for s in shared], confidence, resamples, bootstrap_seed)
        assert boot is not None and test.half_width is not None  # n >= 2
        return Comparison(test="paired", seeds=shared, difference=test.difference,
                          low=test.difference - test.half_width, high=test.difference + test.half_width,
                          bootstrap_low=boot[0], bootstrap_high=boot[1], t=test.t, df=test.df,
                          p_value=test.p_value, sd_difference=test.sd, sd_difference_assumed=False,
                          mdd=minimum_detectable_difference(test.sd, test.n, alpha, power), **common)
    welch = welch_test(list(a.values()), list(b.values()), confidence)
    half = welch.half_width
    assumed = None if sd_reference is None else sd_reference * math.sqrt(2)
    return Comparison(test="welch", seeds=(), difference=welch.difference,
                      low=None if half is None else welch.difference - half,
                      high=None if half is None else welch.difference + half,
                      bootstrap_low=None, bootstrap_high=None, t=welch.t, df=welch.df, p_value=welch.p_value,
                      sd_difference=assumed, sd_difference_assumed=True,
                      mdd=minimum_detectable_difference(assumed, min(len(a), len(b)), alpha, power), **common)

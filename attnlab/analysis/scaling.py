"""Compute multipliers: how much training compute a variant saves, read off fitted scaling curves.

Each variant's runs (several seeds at each compute rung) are fitted by a saturating power law

    L(C) = E + A * C^(-alpha),      E >= 0, A > 0, 0 < alpha <= 3,

with C the training FLOPs of a run (raw, not normalised: the fit normalises internally).
At a rung where the variant spent compute C_v, with L_v its fitted curve and L_ref the reference
variant's, the compute multiplier is

    m = L_ref^{-1}(L_v(C_v)) / C_v,      L_ref^{-1}(L) = (A / (L - E))^(1/alpha),

the compute the reference would need for the variant's loss, per FLOP the variant spent (m > 1:
the variant saves compute). m = inf when L_v(C_v) <= E_ref: no amount of reference compute gets
there. Both losses are read off fitted curves, so that the reference against itself is 1 at every
rung: a variant's raw mean loss read against the reference's fit would carry the reference's own
residual at that rung (its scatter about its curve) as if it were the variant's gain or loss.

Uncertainty comes from a paired bootstrap over SEEDS: one draw of seeds with replacement per
resample is applied to every (variant, rung), because runs with the same seed share the data
order (as in ``stats.paired_test``); every curve is refitted and every quantity recomputed.
Drawing seeds is the same as giving each run a weight (how often its seed was drawn), so each
fit is a weighted least-squares fit; the point estimate is the fit with every weight 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from attnlab.analysis.stats import _check_level

MIN_RUNGS = 4  # distinct compute values: 3 parameters plus one degree of freedom for the residual
ALPHA_MAX = 3.0
# Profile grid over alpha, then golden-section search in the bracket around the best grid point.
_ALPHA_GRID = np.geomspace(1e-3, ALPHA_MAX, 81)  # steps of 10%
_GOLDEN_STEPS = 45  # bracket shrinks by 0.618^45 ~ 4e-10
COLUMNS = ("variant", "rung", "seed", "compute", "loss")


class FitError(ValueError):
    """A power law cannot be fitted to these points (too few rungs, or loss that does not fall);
    ``variant``: whose points, where one variant's of several."""

    def __init__(self, message: str, variant: str | None = None) -> None:
        super().__init__(message)
        self.variant = variant


def _loss(E, A, alpha, compute):
    return E + A * np.asarray(compute, dtype=float) ** -np.asarray(alpha)


def _compute_at(E, A, alpha, loss):
    """(A / (L - E))^(1/alpha) where L > E, inf elsewhere; broadcasts over all arguments."""
    E, A, alpha, loss = np.broadcast_arrays(*(np.asarray(v, dtype=float) for v in (E, A, alpha, loss)))
    out = np.full(loss.shape, np.inf)
    above = loss > E
    with np.errstate(over="ignore"):
        out[above] = (A[above] / (loss[above] - E[above])) ** (1.0 / alpha[above])
    return out


def _scalar(value):
    return float(value) if np.ndim(value) == 0 else value


@dataclass(frozen=True)
class PowerLaw:
    """L(C) = E + A * C^(-alpha) in raw compute C (FLOPs)."""

    E: float
    A: float
    alpha: float

    def loss(self, compute):
        return _scalar(_loss(self.E, self.A, self.alpha, compute))

    def compute_at(self, loss):
        """The inverse, C = (A / (L - E))^(1/alpha); inf where L <= E (the curve never gets there)."""
        return _scalar(_compute_at(self.E, self.A, self.alpha, loss))


def _linear_fit(z, y, w):
    """Best (E, a) >= (0, 0) for y ~ E + a z by weighted least squares; broadcasts over leading dims.

    For fixed alpha the model is linear, a convex problem on the quadrant: the optimum is the
    unconstrained one when feasible, else the better of the two edge optima (E = 0 or a = 0).
    Returns E, a, and the weighted sum of squared residuals.
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        total = w.sum(-1)
        z_mean = (w * z).sum(-1) / total
        y_mean = (w * y).sum(-1) / total
        dz = z - z_mean[..., None]
        a_free = (w * dz * (y - y_mean[..., None])).sum(-1) / (w * dz * dz).sum(-1)
        e_free = y_mean - a_free * z_mean
        a_edge = np.maximum((w * z * y).sum(-1) / (w * z * z).sum(-1), 0.0)
        e_edge = np.maximum(y_mean, 0.0)
    candidates = [(e_free, a_free), (np.zeros_like(a_edge), a_edge), (e_edge, np.zeros_like(e_edge))]
    best_e, best_a, best_sse = None, None, None
    for k, (e, a) in enumerate(candidates):
        sse = (w * (y - e[..., None] - a[..., None] * z) ** 2).sum(-1)
        if k == 0:
            sse = np.where((e_free >= 0) & (a_free > 0) & np.isfinite(sse), sse, np.inf)
            best_e, best_a, best_sse = e, a, sse
        else:
            better = sse < best_sse
            best_e, best_a, best_sse = (np.where(better, e, best_e), np.where(better, a, best_a),
                                        np.where(better, sse, best_sse))
    return best_e, best_a, best_sse


def _fit_weighted(compute, loss, weights):
    """Fit L = E + A C^-alpha once per row of ``weights`` (R, n): arrays E, A, alpha, ok of length R.

    Variable projection: with x = C / C_ref (C_ref the geometric mean of the distinct compute
    values, for conditioning), the least-squares cost profiled over (E, a) is a function of alpha
    alone; it is minimised on a geometric grid over (0, 3], then by golden-section search in the
    bracket around the best grid point. A = a * C_ref^alpha converts back to raw compute.
    ok is False when fewer than MIN_RUNGS distinct compute values carry weight, or when the best
    curve has A = 0 (the loss does not fall with compute).
    """
    compute, loss = np.asarray(compute, dtype=float), np.asarray(loss, dtype=float)
    weights = np.atleast_2d(np.asarray(weights, dtype=float))
    distinct, rung_of = np.unique(compute, return_inverse=True)
    c_ref = float(np.exp(np.log(distinct).mean()))
    log_x = np.log(compute / c_ref)
    rung_weight = np.zeros((weights.shape[0], distinct.size))
    np.add.at(rung_weight, (slice(None), rung_of), weights)
    enough = (rung_weight > 0).sum(1) >= MIN_RUNGS

    z_grid = np.exp(-_ALPHA_GRID[:, None] * log_x)  # (G, n)
    sse_grid = _linear_fit(z_grid[:, None, :], loss, weights[None])[2]  # (G, R)
    best = np.argmin(sse_grid, axis=0)
    low = _ALPHA_GRID[np.maximum(best - 1, 0)]
    high = _ALPHA_GRID[np.minimum(best + 1, _ALPHA_GRID.size - 1)]

    def profile(alpha):
        return _linear_fit(np.exp(-alpha[:, None] * log_x), loss, weights)

    ratio = (np.sqrt(5.0) - 1) / 2
    left, right = high - ratio * (high - low), low + ratio * (high - low)
    sse_left, sse_right = profile(left)[2], profile(right)[2]
    for _ in range(_GOLDEN_STEPS):  # one new profile evaluation per step: the other point is reused
        go_left = sse_left <= sse_right
        low, high = np.where(go_left, low, left), np.where(go_left, right, high)
        probe = np.where(go_left, high - ratio * (high - low), low + ratio * (high - low))
        sse_probe = profile(probe)[2]
        left, right = np.where(go_left, probe, right), np.where(go_left, left, probe)
        sse_left, sse_right = np.where(go_left, sse_probe, sse_right), np.where(go_left, sse_left, sse_probe)
    alpha = (low + high) / 2
    E, a, sse = profile(alpha)
    grid_alpha = _ALPHA_GRID[best]
    grid_e, grid_a, grid_sse = profile(grid_alpha)
    keep_grid = grid_sse < sse  # the search is only a refinement: never worse than the grid
    alpha, E, a = np.where(keep_grid, grid_alpha, alpha), np.where(keep_grid, grid_e, E), np.where(keep_grid, grid_a, a)
    ok = enough & (a > 0) & np.isfinite(E) & np.isfinite(a)
    return E, a * c_ref**alpha, alpha, ok


def fit_power_law(compute, loss) -> PowerLaw:
    """Least-squares fit of L(C) = E + A C^(-alpha) to points (C_i, L_i), seeds as separate points.

    Parameters are for raw compute C. Raises ValueError (FitError) with fewer than MIN_RUNGS
    distinct compute values, or when the loss does not fall with compute.
    """
    compute, loss = np.asarray(compute, dtype=float).ravel(), np.asarray(loss, dtype=float).ravel()
    if compute.shape != loss.shape:
        raise ValueError(f"compute and loss need equal lengths, got {compute.size} and {loss.size}")
    if not (np.all(np.isfinite(compute)) and np.all(np.isfinite(loss)) and np.all(compute > 0)):
        raise ValueError("compute must be finite and > 0, loss finite")
    rungs = np.unique(compute).size
    if rungs < MIN_RUNGS:
        raise FitError(f"a power-law fit needs at least {MIN_RUNGS} distinct compute values (rungs) "
                       f"for 3 parameters; got {rungs}")
    E, A, alpha, ok = _fit_weighted(compute, loss, np.ones((1, compute.size)))
    if not ok[0]:
        raise FitError("power-law fit failed: the loss does not fall with compute (best A is 0)")
    return PowerLaw(float(E[0]), float(A[0]), float(alpha[0]))


def compute_multiplier(reference: PowerLaw, variant_compute, variant_loss):
    """reference.compute_at(variant_loss) / variant_compute: > 1 when the variant saves compute.

    inf when the variant's loss is at or below the reference's E.
    """
    return _scalar(reference.compute_at(variant_loss) / np.asarray(variant_compute, dtype=float))


def _interval(values, confidence):
    """Percentile interval of the finished resamples (NaN = undefined there, dropped).

    Order statistics (quantile methods "lower"/"higher") rather than interpolation, so that
    infinite multipliers stay valid values: the bound is then inf, not NaN.
    """
    values = np.asarray(values, dtype=float)
    values = values[~np.isnan(values)]
    if values.size == 0:
        return np.nan, np.nan
    return (float(np.quantile(values, (1 - confidence) / 2, method="lower")),
            float(np.quantile(values, (1 + confidence) / 2, method="higher")))


def _slope(log_compute, log_multiplier):
    """OLS slope per row over the finite entries; NaN where fewer than 2 distinct finite points."""
    finite = np.isfinite(log_compute) & np.isfinite(log_multiplier)
    n = finite.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        x_mean = np.where(finite, log_compute, 0).sum(1) / n
        y_mean = np.where(finite, log_multiplier, 0).sum(1) / n
        dx = np.where(finite, log_compute - x_mean[:, None], 0)
        dy = np.where(finite, log_multiplier - y_mean[:, None], 0)
        sxx = (dx * dx).sum(1)
        slope = (dx * dy).sum(1) / sxx
    return np.where((n >= 2) & (sxx > 0), slope, np.nan)


@dataclass(frozen=True)
class ScalingComparison:
    """Tables of ``scaling_comparison``; intervals are percentile intervals over seed resamples.

    fits: variant, n_rungs, n_runs, E, A, alpha (+ _low, _high each).
    multipliers (one row per non-reference variant and rung, rungs by compute): variant, rung,
      n_seeds, compute, loss (means over seeds), fitted_loss (the variant's curve at that compute,
      which the multiplier reads), multiplier (+ _low, _high), infinite_resamples
      (resamples where the variant's loss fell below the reference's E), extrapolated (the
      reference compute read off lies outside the reference's rungs), reference_compute,
      loss_difference (+ _low, _high): the variant's fitted curve minus the reference's, at
      reference_compute (the reference's mean compute at that rung; NaN if it lacks the rung).
    trends: variant, n_rungs (finite multipliers in the point estimate), slope (+ _low, _high),
      undefined_resamples (resamples with < 2 finite multipliers).
    failed_resamples: resamples dropped because some variant's fit failed, out of ``resamples``.
    """

    fits: pd.DataFrame
    multipliers: pd.DataFrame
    trends: pd.DataFrame
    failed_resamples: int
    resamples: int
    reference: str
    confidence: float
    # Per variant (the reference too, at 1): the multiplier at its largest-compute rung in the point
    # estimate (index 0) and every resample (NaN where the resample failed), and the seeds each
    # resample drew (``seed_draws[r]``: seed values): what another seed-paired statistic reuses.
    top_multipliers: dict = field(default_factory=dict, compare=False)
    seed_draws: np.ndarray | None = field(default=None, compare=False)


def _weighted_mean(weights, values):
    with np.errstate(invalid="ignore", divide="ignore"):
        return (weights * values).sum(1) / weights.sum(1)


def scaling_comparison(frame: pd.DataFrame, reference: str = "baseline", resamples: int = 1000,
                       seed: int = 0, confidence: float = 0.95) -> ScalingComparison:
    """Fit every variant's curve and compare each with ``reference``: multipliers, loss gaps, trends.

    Point estimates use every run. Multiplier at a rung: the reference fit's compute for the
    variant's fitted loss at its mean compute there, over that compute. Loss difference at equal
    FLOPs: L_v(C) - L_ref(C) of the two fitted curves at the reference's mean compute of the rung.
    Trend: OLS slope of log(multiplier) on log(compute) over the rungs, m ~ C^slope (slope > 0:
    the advantage grows with scale); rungs with an infinite multiplier are left out, separately in
    each resample, since log(inf) carries no position for a line.

    Bootstrap: ``resamples`` draws of the seeds with replacement (``numpy.random.default_rng(seed)``),
    the same draw for every variant and rung (paired by seed). A resample where any variant's fit
    fails (e.g. fewer than MIN_RUNGS rungs keep a drawn seed) is dropped and counted.
    """
    _check_level("confidence", confidence)
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"frame lacks columns {missing}; needs {list(COLUMNS)}")
    variants = list(dict.fromkeys(frame["variant"]))
    if reference not in variants:
        raise ValueError(f"reference variant {reference!r} is not in the frame; variants: {variants}")
    variants = [reference] + [v for v in variants if v != reference]

    seeds, seed_index = np.unique(frame["seed"].to_numpy(), return_inverse=True)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, seeds.size, size=(resamples, seeds.size))  # indices into seeds
    counts = np.zeros((resamples, seeds.size))
    np.add.at(counts, (np.arange(resamples)[:, None], draws), 1.0)
    seed_weight = np.vstack([np.ones(seeds.size), counts])  # row 0: the point estimate

    fit, cells = {}, {}
    for variant in variants:
        mask = (frame["variant"] == variant).to_numpy()
        rows = frame[mask]
        compute, loss = rows["compute"].to_numpy(float), rows["loss"].to_numpy(float)
        rungs = rows["rung"].nunique()
        if rungs < MIN_RUNGS:
            raise FitError(f"{variant}: a power-law fit needs at least {MIN_RUNGS} distinct compute values "
                           f"(rungs) for 3 parameters; got {rungs}", variant)
        weights = seed_weight[:, seed_index[mask]]  # (1 + R, runs)
        E, A, alpha, ok = _fit_weighted(compute, loss, weights)
        if not ok[0]:
            raise FitError(f"{variant}: power-law fit failed: the loss does not fall with compute", variant)
        fit[variant] = (E, A, alpha, ok, rows.shape[0], rungs)
        rung_labels = rows.groupby("rung")["compute"].mean().sort_values().index
        cells[variant] = {}
        for rung in rung_labels:
            at = (rows["rung"] == rung).to_numpy()
            w = weights[:, at]
            cells[variant][rung] = (_weighted_mean(w, compute[at]), _weighted_mean(w, loss[at]), int(at.sum()))

    failed = ~np.logical_and.reduce([f[3][1:] for f in fit.values()])
    kept = np.concatenate([[False], ~failed])  # boolean index of the finished resamples
    finished = np.concatenate([[True], ~failed])  # the same with the point estimate (row 0)

    def interval(values):
        return _interval(values[kept], confidence)

    fit_rows = []
    for variant, (E, A, alpha, _, n_runs, rungs) in fit.items():
        row = dict(variant=variant, n_rungs=rungs, n_runs=n_runs)
        for name, values in (("E", E), ("A", A), ("alpha", alpha)):
            row[name] = float(values[0])
            row[f"{name}_low"], row[f"{name}_high"] = interval(values)
        fit_rows.append(row)

    E_ref, A_ref, alpha_ref = fit[reference][:3]
    ref_span = (float(frame.loc[frame["variant"] == reference, "compute"].min()),
                float(frame.loc[frame["variant"] == reference, "compute"].max()))
    multiplier_rows, trend_rows = [], []
    top = {reference: np.where(finished, 1.0, np.nan)}
    for variant in variants[1:]:
        E, A, alpha = fit[variant][:3]
        log_compute, log_multiplier = [], []
        for rung, (compute, loss, n_seeds) in cells[variant].items():
            fitted = _loss(E, A, alpha, compute)
            multiplier = _compute_at(E_ref, A_ref, alpha_ref, fitted) / compute
            reference_compute = cells[reference][rung][0] if rung in cells[reference] else np.full_like(compute, np.nan)
            difference = _loss(E, A, alpha, reference_compute) - _loss(E_ref, A_ref, alpha_ref, reference_compute)
            needed = multiplier[0] * compute[0]
            row = dict(variant=variant, rung=rung, n_seeds=n_seeds, compute=float(compute[0]), loss=float(loss[0]),
                       fitted_loss=float(fitted[0]), multiplier=float(multiplier[0]))
            row["multiplier_low"], row["multiplier_high"] = interval(multiplier)
            row["infinite_resamples"] = int(np.isinf(multiplier[kept]).sum())
            row["extrapolated"] = bool(not ref_span[0] <= needed <= ref_span[1])
            row["reference_compute"] = float(reference_compute[0])
            row["loss_difference"] = float(difference[0])
            row["loss_difference_low"], row["loss_difference_high"] = interval(difference)
            multiplier_rows.append(row)
            log_compute.append(np.log(compute))
            with np.errstate(divide="ignore"):
                log_multiplier.append(np.log(multiplier))
        top[variant] = np.where(finished, multiplier, np.nan)  # the last rung by compute: the largest
        slope = _slope(np.stack(log_compute, 1), np.stack(log_multiplier, 1))
        low, high = interval(slope)
        trend_rows.append(dict(variant=variant, n_rungs=int(np.isfinite(np.stack(log_multiplier, 1)[0]).sum()),
                               slope=float(slope[0]), slope_low=low, slope_high=high,
                               undefined_resamples=int(np.isnan(slope[kept]).sum())))

    return ScalingComparison(fits=pd.DataFrame(fit_rows), multipliers=pd.DataFrame(multiplier_rows),
                             trends=pd.DataFrame(trend_rows), failed_resamples=int(failed.sum()),
                             resamples=resamples, reference=reference, confidence=confidence,
                             top_multipliers=top, seed_draws=seeds[draws])

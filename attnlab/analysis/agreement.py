"""Does the battery predict the ladder? Spearman's rank correlation, over the variants both
have, between the battery's overall score (per seed: the mean of its task accuracies) and the
ladder's compute multiplier at its largest rung (the reference variant at 1).

The interval is a percentile bootstrap over seeds: each resample reuses the ladder's own draw of
seeds (``ScalingComparison.seed_draws``), so the battery's scores and the multipliers come from
the same drawn seeds, as the runs of a seed share their data order. With a handful of variants
a rank correlation takes few values and its interval is wide; the table says how many variants
it ranks.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from attnlab.analysis.scaling import ScalingComparison

MIN_VARIANTS = 3  # fewer: a rank correlation is +-1 or undefined


def _rho(x, y) -> float:
    if len(set(x)) < 2 or len(set(y)) < 2:
        return math.nan  # a constant ranking correlates with nothing
    return float(spearmanr(x, y).statistic)


def battery_ladder_agreement(battery_scores: dict[str, pd.Series], scaling: ScalingComparison) -> dict:
    """``battery_scores``: variant -> per-seed overall score (seed -> score). Returns the variants
    ranked, the point estimates, rho with its interval and the resamples used, or ``reason`` alone
    when there is nothing to rank."""
    variants = [v for v in scaling.top_multipliers if len(battery_scores.get(v, ()))]
    if len(variants) < MIN_VARIANTS:
        return {"reason": f"{len(variants)} variant(s) with both a battery score and a ladder multiplier "
                          f"({', '.join(variants) or 'none'}); a rank correlation needs at least {MIN_VARIANTS}"}
    scores = {v: battery_scores[v].groupby(level=0).mean() for v in variants}
    point_score = [float(scores[v].mean()) for v in variants]
    point_multiplier = [float(scaling.top_multipliers[v][0]) for v in variants]
    rhos = []
    for r, drawn in enumerate(scaling.seed_draws):
        multipliers = [scaling.top_multipliers[v][r + 1] for v in variants]
        drawn_scores = [scores[v].reindex(drawn) for v in variants]
        if any(np.isnan(m) for m in multipliers) or any(s.isna().any() for s in drawn_scores):
            continue  # a failed ladder resample, or a seed the battery did not run
        rhos.append(_rho([float(s.mean()) for s in drawn_scores], multipliers))
    finite = np.array([r for r in rhos if not math.isnan(r)])
    half = (1 - scaling.confidence) / 2
    low, high = (np.quantile(finite, [half, 1 - half]).tolist() if finite.size else (math.nan, math.nan))
    # Scored by the battery, not ranked: not on the ladder, or its fit failed there (attnlab/analysis/ladder.py).
    unranked = sorted(v for v, s in battery_scores.items() if len(s) and v not in scaling.top_multipliers)
    return {"variants": variants, "battery_score": point_score, "top_rung_multiplier": point_multiplier,
            "rho": _rho(point_score, point_multiplier), "rho_low": low, "rho_high": high,
            "resamples": int(finite.size), "confidence": scaling.confidence, "without_multiplier": unranked}


def agreement_table(result: dict) -> pd.DataFrame:
    """One row per variant: its battery score, its multiplier, and their ranks (1 = best)."""
    frame = pd.DataFrame({"variant": result["variants"], "battery_score": result["battery_score"],
                          "top_rung_multiplier": result["top_rung_multiplier"]})
    frame["battery_rank"] = frame["battery_score"].rank(ascending=False, method="average")
    frame["ladder_rank"] = frame["top_rung_multiplier"].rank(ascending=False, method="average")
    return frame

"""Does the battery predict the ladder: Spearman between the battery's overall score and the
ladder's top-rung compute multiplier, with the ladder's seed draws reused for the battery."""

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from attnlab.analysis.agreement import agreement_table, battery_ladder_agreement
from attnlab.analysis.scaling import scaling_comparison
from .test_scaling import TRUE, runs

MULTIPLIERS = {"baseline": 1.0, "slow": 0.5, "fast": 2.0, "faster": 4.0}


def ladder(noise=0.0, seed=0):
    curves = {v: (TRUE, k) for v, k in MULTIPLIERS.items()}
    return scaling_comparison(runs(curves, noise=noise, rng=np.random.default_rng(seed)), resamples=200)


def battery(order: dict[str, float], spread=0.0) -> dict[str, pd.Series]:
    return {v: pd.Series({0: score - spread, 1: score + spread, 2: score}) for v, score in order.items()}


def test_the_same_ranking_gives_rho_one_and_the_reverse_minus_one():
    scaling = ladder()
    assert scaling.top_multipliers["baseline"][0] == 1.0
    assert scaling.top_multipliers["faster"][0] == pytest.approx(4.0, rel=1e-3)
    same = battery({"baseline": 0.5, "slow": 0.4, "fast": 0.6, "faster": 0.7})
    result = battery_ladder_agreement(same, scaling)
    assert result["rho"] == pytest.approx(1.0)
    assert (result["rho_low"], result["rho_high"]) == pytest.approx((1.0, 1.0))  # no noise: every resample agrees
    assert result["resamples"] == 200
    reverse = battery({"baseline": 0.5, "slow": 0.6, "fast": 0.4, "faster": 0.3})
    assert battery_ladder_agreement(reverse, scaling)["rho"] == pytest.approx(-1.0)
    table = agreement_table(result).set_index("variant")
    assert table.loc["faster", "battery_rank"] == 1 and table.loc["faster", "ladder_rank"] == 1
    assert table.loc["slow", "battery_rank"] == 4 and table.loc["slow", "ladder_rank"] == 4


def test_noise_gives_an_interval_from_the_ladders_own_seed_draws():
    scaling = ladder(noise=0.02)
    scores = battery({"baseline": 0.5, "slow": 0.48, "fast": 0.52, "faster": 0.54}, spread=0.05)
    result = battery_ladder_agreement(scores, scaling)
    assert -1 <= result["rho_low"] < result["rho_high"] <= 1
    # The interval recomputed by hand: resample r pairs the battery's mean over the seeds the
    # ladder's resample r drew with that resample's top-rung multipliers.
    variants = result["variants"]
    by_hand = []
    for r, drawn in enumerate(scaling.seed_draws):
        multipliers = [scaling.top_multipliers[v][r + 1] for v in variants]
        if np.isnan(multipliers).any():
            continue
        by_hand.append(spearmanr([scores[v].reindex(drawn).mean() for v in variants], multipliers).statistic)
    by_hand = np.array(by_hand)[np.isfinite(by_hand)]
    assert result["resamples"] == by_hand.size > 150
    assert [result["rho_low"], result["rho_high"]] == pytest.approx(np.quantile(by_hand, [0.025, 0.975]).tolist())


def test_fewer_than_three_shared_variants_say_why():
    scaling = ladder()
    result = battery_ladder_agreement(battery({"baseline": 0.5, "fast": 0.6, "other": 0.1}), scaling)
    assert set(result) == {"reason"}
    assert "2 variant(s)" in result["reason"] and "baseline, fast" in result["reason"]

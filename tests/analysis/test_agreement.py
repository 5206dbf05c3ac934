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
    assert result["without_multiplier"] == []
    # A variant the battery scored but the ladder has no multiplier for is named, not ranked.
    extra = battery_ladder_agreement({**same, **battery({"sliding_window": 0.1})}, scaling)
    assert extra["without_multiplier"] == ["sliding_window"] and "sliding_window" not in extra["variants"]
    assert extra["rho"] == pytest.approx(1.0)
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


def test_each_task_is_correlated_with_the_ladder_on_its_own_beside_the_overall_score():
    from attnlab.analysis.battery import per_task_agreement_table

    scaling = ladder()
    agrees = battery({"baseline": 0.5, "slow": 0.4, "fast": 0.6, "faster": 0.7})
    reverses = battery({"baseline": 0.5, "slow": 0.6, "fast": 0.4, "faster": 0.3})
    flat = battery(dict.fromkeys(MULTIPLIERS, 0.25))  # every variant at the same score
    tasks = {(v, task): scores[v] for task, scores in (("copy", agrees), ("recall", reverses), ("flat", flat))
             for v in MULTIPLIERS}
    tasks.update({(v, "unsolvable"): pd.Series(dtype=float) for v in MULTIPLIERS})  # no informative cell
    overall = battery_ladder_agreement({v: (2 * agrees[v] + reverses[v] + flat[v]) / 4 for v in MULTIPLIERS},
                                       scaling)
    table = per_task_agreement_table(overall, tasks, scaling, "the ladder").numbers.set_index("score")
    assert list(table.index) == ["overall", "copy", "flat", "recall", "unsolvable"]
    assert table.loc["copy", "rho"] == pytest.approx(1.0) and table.loc["recall", "rho"] == pytest.approx(-1.0)
    assert np.isnan(table.loc["flat", "rho"]) and table.loc["flat", "variants"] == 4  # a constant ranking
    assert table.loc["overall", "rho"] == overall["rho"]
    assert table.loc["unsolvable", "reason"] == "no informative cell (as in per_task)"
    assert table.loc["unsolvable", "variants"] == 0
    assert table.loc["copy", "resamples"] == 200 and table.loc["unsolvable", "resamples"] == 0
    # A task two variants have a score on: no rho, and the count says two.
    tasks = {(v, "copy"): agrees[v] for v in ("baseline", "fast")}
    two = per_task_agreement_table(overall, tasks, scaling, "the ladder").numbers.set_index("score")
    assert two.loc["copy", "variants"] == 2 and "needs at least 3" in two.loc["copy", "reason"]

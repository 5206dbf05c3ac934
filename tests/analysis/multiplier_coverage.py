"""How often the 95% bootstrap interval of the largest rung's compute multiplier covers the truth,
on simulated ladders (the tests' synthetic curves: a variant that is the reference with twice the
compute, loss noise sd 0.01, 5 rungs), with 3 seeds and with 10. The README's figures:

    python tests/analysis/multiplier_coverage.py   # 3 seeds: 279 / 400 (0.698); 10 seeds: 181 / 200 (0.905)

Beside the tests whose curves it draws (not collected by pytest: minutes, not seconds).
"""

from __future__ import annotations

import numpy as np
from test_scaling import TRUE, runs  # the synthetic ladders of the tests beside this file

from attnlab.analysis.scaling import scaling_comparison

MULTIPLIER = 2.0


def coverage(seeds: tuple[int, ...], ladders: int) -> int:
    rng = np.random.default_rng(123)
    covered = 0
    for i in range(ladders):
        frame = runs({"baseline": TRUE, "fast": (TRUE, MULTIPLIER)}, noise=0.01, rng=rng, seeds=seeds)
        top = scaling_comparison(frame, resamples=200, seed=i).multipliers.iloc[-1]
        covered += bool(top["multiplier_low"] <= MULTIPLIER <= top["multiplier_high"])
    return covered


if __name__ == "__main__":
    for seeds, ladders in (((0, 1, 2), 400), (tuple(range(10)), 200)):
        hit = coverage(seeds, ladders)
        print(f"{len(seeds)} seeds: {hit} / {ladders} ({hit / ladders:.3f})", flush=True)

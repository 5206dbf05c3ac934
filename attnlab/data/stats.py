"""Statistics of a prepared token split."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from attnlab.data.shards import ShardIndex


def unigram_entropy_nats(index_path: Path) -> float:
    """Entropy of the token unigram distribution: the loss of a model that ignores context,
    the bar a trained model must clear."""
    counts = np.bincount(ShardIndex.load(index_path).read_all()).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())

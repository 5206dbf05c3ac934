"""``sigmoid_attn``: sigmoid instead of softmax, with a bias, no normalisation.

Ramapuram et al. 2024, "Theory, Analysis, and Best Practices for Sigmoid Self-Attention":

    w_ij = sigmoid(q_i . k_j / sqrt(hs) + b),   b = -log(n),   y_i = sum_{j <= i} w_ij v_j

n is the sequence length; the bias starts the weights near 1/n, so that their sum is of
order one as with a softmax. n is a fixed number (option ``seq_len``; default the model's
``block_size``), not the length of the current call, so that KV-cache decoding equals
the full forward.

No extra parameters. SDPA and FlexAttention always normalise with a softmax, so the
variant runs on the explicit kernel (``auto`` picks it). Analysis weights: the sigmoid
weights; a query's row does not sum to one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from attnlab.attention import AttentionSpec
from attnlab.config import ModelConfig
from variants.baseline import BaselineAttention
from variants.registry import register


@register("sigmoid_attn")
class SigmoidAttention(BaselineAttention):
    """sigmoid(q.k / sqrt(d) - log n) weights, unnormalised, in place of the softmax."""

    paper = "Ramapuram et al. 2024, Theory, Analysis, and Best Practices for Sigmoid Self-Attention"
    weights_are_distributions = False

    @dataclass(frozen=True)
    class Options:
        seq_len: int | None = None  # n in b = -log n; None: the model's block_size

        def __post_init__(self) -> None:
            if self.seq_len is not None and self.seq_len < 1:
                raise ValueError(f"option seq_len must be a positive integer or null, got {self.seq_len}")

    @classmethod
    def attention_spec(cls, config: ModelConfig) -> AttentionSpec:
        n = cls.options(config).seq_len or config.block_size
        return AttentionSpec(normaliser="sigmoid", sigmoid_bias=-math.log(n))

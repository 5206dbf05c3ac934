"""``sliding_window``: causal local attention over the last w keys.

    w_ij = softmax_j(q_i . k_j / sqrt(hs))  over  p_i - w < j <= p_i

Each query sees its own position and the w - 1 before it (Beltagy et al. 2020,
"Longformer"; Child et al. 2019, "Sparse Transformers"; the local layers of Mistral 7B and
Gemma 2). Option ``window`` = w. The window follows absolute positions, so KV-cache
decoding computes exactly what the full forward does (the cache keeps every key; the
mask hides the old ones).

No extra parameters. Fused on every kernel: SDPA with a boolean mask, FlexAttention with
a block mask that skips the tiles outside the window (``auto``'s choice on CUDA).
Analysis weights: softmax probabilities, zero outside the window.
"""

from __future__ import annotations

from dataclasses import dataclass

from attnlab.attention import AttentionSpec
from attnlab.config import ModelConfig
from variants.baseline import BaselineAttention
from variants.registry import register


@register("sliding_window")
class SlidingWindowAttention(BaselineAttention):
    """Causal softmax attention restricted to the last w keys (the query's own included)."""

    paper = "Beltagy et al. 2020, Longformer: The Long-Document Transformer (sliding-window attention)"

    @dataclass(frozen=True)
    class Options:
        window: int = 64  # w: keys per query, its own position included

        def __post_init__(self) -> None:
            if self.window < 1:
                raise ValueError(f"option window must be a positive integer, got {self.window}")

    @classmethod
    def attention_spec(cls, config: ModelConfig) -> AttentionSpec:
        return AttentionSpec(window=cls.options(config).window)

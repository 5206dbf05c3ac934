"""``sliding_window``: causal local attention over the last w keys.

    w_ij = softmax_j(q_i . k_j / sqrt(hs))  over  p_i - w < j <= p_i

Each query sees its own position and the w - 1 before it (Beltagy et al. 2020,
"Longformer"; Child et al. 2019, "Sparse Transformers"; the local layers of Mistral 7B and
Gemma 2). The window follows absolute positions, so KV-cache decoding computes exactly
what the full forward does (the cache keeps every key; the mask hides the old ones).

Options: ``window`` and ``window_convention``, how ``window`` is counted. ``hf`` (default):
w = window keys, the query's own included, as Hugging Face's Mistral and Gemma 2 masks
(``sliding_window``), the code those models were released with, and as attnlab counted
before. ``attention_gym``: window keys before the query plus the query, w = window + 1, as
attention-gym's sliding-window mask (``q_idx - kv_idx <= window_size``) and Mistral's paper
text (positions i - W .. i).

No extra parameters. Fused on every kernel: SDPA with a boolean mask, FlexAttention with
a block mask that skips the tiles outside the window (``auto``'s choice on CUDA).
Analysis weights: softmax probabilities, zero outside the window.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

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
        window: int = 64
        window_convention: Literal["hf", "attention_gym"] = "hf"  # w = window (hf) or window + 1

        def __post_init__(self) -> None:
            if self.window < 1:
                raise ValueError(f"option window must be a positive integer, got {self.window}")

    @classmethod
    def attention_spec(cls, config: ModelConfig) -> AttentionSpec:
        options = cls.options(config)
        return AttentionSpec(window=options.window + (options.window_convention == "attention_gym"))

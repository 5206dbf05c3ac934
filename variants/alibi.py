"""``alibi``: attention with linear biases, no positional embedding.

Press et al. 2022, "Train Short, Test Long: Attention with Linear Biases Enables Input
Length Extrapolation" (ICLR 2022). RoPE is off; each head h adds a penalty linear in the
query-key distance to its logits:

    s_ij = q_i . k_j / sqrt(hs) - m_h * (p_i - j)        j <= p_i (causal)

with fixed head-specific slopes m_h, a geometric sequence. For n heads, n a power of 2:

    m_h = 2^(-8 h / n),   h = 1..n            (8 heads: 1/2, 1/4, ..., 1/256)

For other n (the authors' rule, from their code): the n' = 2^floor(log2 n) slopes of n'
heads, followed by the first n - n' of every other slope of 2 n' heads, i.e.
2^(-4 (2k - 1) / n') for k = 1..n - n' (6 heads: 1/4, 1/16, 1/64, 1/256, 1/2, 1/8).

The bias is separable, -m_h p_i for the query plus m_h j for the key, at absolute
positions, so KV-cache decoding adds what the full forward adds and every kernel fuses
it (SDPA's float mask, a FlexAttention ``score_mod``). The terms are computed in at least
float32: the two halves grow with the position and cancel, which bf16 cannot.

No extra parameters (the slopes are a fixed, non-persistent buffer). Analysis weights:
the softmax probabilities of the biased logits; each query's row sums to one.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from attnlab.attention import AttentionSpec, KVCache, ScoreTerms
from attnlab.config import ModelConfig
from variants.baseline import BaselineAttention
from variants.registry import register


def alibi_slopes(n_head: int) -> list[float]:
    """The paper's slope m_h of each of ``n_head`` heads, h = 1..n_head in order."""
    n = 2 ** math.floor(math.log2(n_head))  # the largest power of 2 not above n_head
    slopes = [2.0 ** (-8.0 * h / n) for h in range(1, n + 1)]
    # Not a power of 2: the odd-numbered slopes of 2n heads (those n heads do not have).
    slopes += [2.0 ** (-8.0 * h / (2 * n)) for h in range(1, 2 * n, 2)][:n_head - n]
    return slopes


@register("alibi")
class ALiBiAttention(BaselineAttention):
    """No RoPE; logits get -m_h * (query position - key position), fixed geometric slopes per head."""

    paper = ("Press et al. 2022, Train Short, Test Long: Attention with Linear Biases Enables "
             "Input Length Extrapolation")
    model_settings = {"rotary_percentage": 0.0}

    @classmethod
    def attention_spec(cls, config: ModelConfig) -> AttentionSpec:
        return AttentionSpec(separable_terms=True)

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.register_buffer("slopes", torch.tensor(alibi_slopes(config.n_head)), persistent=False)

    def score_terms(self, x: Tensor, q_offset: int, n_keys: int, kv_cache: KVCache | None) -> ScoreTerms:
        dtype = torch.promote_types(x.dtype, torch.float32)
        slopes = self.slopes.to(dtype).view(1, -1, 1)  # (1, H, 1)
        q_pos = torch.arange(q_offset, q_offset + x.shape[1], device=x.device, dtype=dtype)
        k_pos = torch.arange(n_keys, device=x.device, dtype=dtype)
        return ScoreTerms(query=-slopes * q_pos, key=slopes * k_pos)  # (1, H, T), (1, H, S)

"""``qk_scale``: "add a scale to query*key" from the study (docs/study.md).

Baseline plus, in every layer, a Linear C -> block_size (with bias) applied to
the block input x. Its output s = 0.1 * tanh(Linear(x)) is, for each query, a
vector over absolute key positions; it is added to the scaled q k^T logits
before the mask and the softmax (the key axis uses the first S entries, S the
number of keys, so KV-cache decoding indexes it by absolute key position).
The intent: attention that looks at more than the q.k product.

The study had one head per layer. With several heads we add the same term to
every head (one Linear per layer, as in the study), so the parameter count does
not grow with the head count.

Extra parameters: C * block_size + block_size per layer (25.4M at seed100m).
The term is a dense ``ScoreTerms`` entry, so every kernel expresses it: on CPU it
travels in SDPA's float mask (with the causal -inf; SDPA's math backend, since the mask
needs a gradient; at seed100m, T=512, the whole step costs ~1.05-1.1x the baseline's,
bench/RESULTS.md); on CUDA ``auto`` passes it to FlexAttention as a ``score_mod`` (at head
sizes up to 256; the study's 620 keeps SDPA's float mask).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnlab.attention import AttentionSpec, KVCache, ScoreTerms
from attnlab.config import ModelConfig
from variants.baseline import BaselineAttention
from variants.registry import register


@register("qk_scale")
class QKScaleAttention(BaselineAttention):
    """A per-layer Linear C -> block_size on x; 0.1 * tanh(.) added to the logits per key position."""

    paper = "the study's variant 4, \"add a scale to query*key\" (docs/study.md)"

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.score = nn.Linear(config.n_embd, config.block_size, bias=True)

    def flops_per_token(self, seq_len: int) -> float:
        # The score Linear only computes the rows of the seq_len keys (see score_terms).
        unused_rows = self.score.out_features - min(seq_len, self.score.out_features)
        return super().flops_per_token(seq_len) - 6.0 * self.score.in_features * unused_rows

    @classmethod
    def attention_spec(cls, config: ModelConfig) -> AttentionSpec:
        return AttentionSpec(dense_terms=True)

    def score_terms(self, x: Tensor, q_offset: int, n_keys: int, kv_cache: KVCache | None) -> ScoreTerms:
        # Only the first n_keys outputs are used, so compute only those rows.
        s = F.linear(x, self.score.weight[:n_keys], self.score.bias[:n_keys])  # (B, T, S)
        return ScoreTerms(dense=(0.1 * torch.tanh(s)).unsqueeze(1))  # (B, 1, T, S), every head

"""``qk_scale``: "add a scale to query*key" from the study (SEED.md, variant 4).

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
Training stays on SDPA: the term travels in its float mask (with the causal -inf), so
the explicit softmax is never used in training. A mask that needs a gradient runs on
SDPA's memory-efficient kernel on CUDA and on its math backend on CPU (bmm + softmax,
the same work as the explicit kernel without returning probabilities); at seed100m,
T=512, the whole step costs ~1.05-1.1x the baseline's (bench/RESULTS.md). On a GPU,
``model.attn_kernel=flex`` passes the term to FlexAttention as a ``score_mod`` instead
(``attnlab/attention.py``); which of the two is faster there is still to be measured.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnlab.config import ModelConfig
from variants.baseline import BaselineAttention
from variants.registry import register


@register("qk_scale")
class QKScaleAttention(BaselineAttention):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.score = nn.Linear(config.n_embd, config.block_size, bias=True)

    def flops_per_token(self, seq_len: int) -> float:
        # The score Linear only computes the rows of the seq_len keys (see logits_term).
        unused_rows = self.score.out_features - min(seq_len, self.score.out_features)
        return super().flops_per_token(seq_len) - 6.0 * self.score.in_features * unused_rows

    def logits_term(self, x: Tensor, n_keys: int) -> Tensor:
        # Only the first n_keys outputs are used, so compute only those rows.
        s = F.linear(x, self.score.weight[:n_keys], self.score.bias[:n_keys])  # (B, T, S)
        return (0.1 * torch.tanh(s)).unsqueeze(1)  # (B, 1, T, S), shared by every head

"""``sep_qkv``: "generate q, k, v separately" from the study (docs/study.md).

The study replaced the fused QKV Linear by three Linear layers (q, k, v), each
with a bias and each followed by a tanh GELU, so that q and k could learn
different features. The rest of the model keeps biases off.

Finding: a Linear is applied independently to each output channel, and GELU is
element-wise, so three Linear(C, C) + GELU compute exactly the function of one
Linear(C, 3C) with bias followed by GELU, whose rows are the three weight
matrices stacked (and the fused layer's default init has the same fan-in, hence
the same distribution). We therefore run it as one GEMM. It follows that q and
k were never "tied" in the baseline either, and that the study's faster
training of this model cannot come from its structure.
``tests/test_seed_semantics.py`` checks the equivalence against three separate layers.

Extra parameters: the QKV bias, (H + 2G) * hs per layer.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from attnlab.config import ModelConfig
from variants.baseline import BaselineAttention
from variants.registry import register


@register("sep_qkv")
class SepQKVAttention(BaselineAttention):
    """q, k, v from three Linear layers with bias and tanh-GELU (run as one fused GEMM)."""

    paper = "the study's variant 3, \"generate q, k, v separately\" (docs/study.md)"

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        # Rows [0, H*hs) are W_q, then W_k, then W_v: the three layers of the study, fused.
        self.qkv = nn.Linear(config.n_embd, self.qkv.out_features, bias=True)

    def project_qkv(self, x: Tensor) -> Tensor:
        return F.gelu(self.qkv(x), approximate="tanh")

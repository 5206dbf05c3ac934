"""``qk_norm``: RMSNorm per head on q and k before RoPE.

q_h <- RMSNorm(q_h) * g_q and k_h <- RMSNorm(k_h) * g_k over each head's head_size
channels, with learned gains g_q, g_k (head_size each, shared by the heads of a layer),
then RoPE and the baseline's softmax attention. Bounding the logits this way keeps
attention from collapsing onto one key at high learning rates (Dehghani et al. 2023;
Wortsman et al. 2023); the per-head placement before RoPE is Qwen 3's (OLMo 2 normalises
the whole projection instead). Exports to Hugging Face as ``Qwen3ForCausalLM``.

Extra parameters: 2 * head_size per layer. Analysis weights: softmax probabilities.
"""

from __future__ import annotations

from torch import Tensor

from attnlab.config import ModelConfig
from attnlab.norm import RMSNorm
from variants.baseline import BaselineAttention
from variants.registry import register


@register("qk_norm")
class QKNormAttention(BaselineAttention):
    """RMSNorm per head on q and k before RoPE (as in Qwen 3, OLMo 2, modded-nanogpt)."""

    paper = "Dehghani et al. 2023, Scaling Vision Transformers to 22B Parameters (QK-norm); per head as in Qwen 3"

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.q_norm = RMSNorm(config.head_size, eps=config.norm_eps)
        self.k_norm = RMSNorm(config.head_size, eps=config.norm_eps)

    def transform_qk(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        return self.q_norm(q), self.k_norm(k)

"""``softcap``: logit soft-capping, as in Gemma 2.

    s_ij = c * tanh((q_i . k_j / sqrt(hs)) / c),   w_i = softmax_j(s_ij)

Logits stay in (-c, c): near-linear for |s| << c, saturating beyond, which keeps a few
large logits from dominating (Gemma Team 2024, "Gemma 2: Improving Open Language Models
at a Practical Size", attention logits capped at c = 50). Option ``cap`` = c.

No extra parameters. SDPA cannot apply the tanh inside its kernel: ``auto`` trains on
FlexAttention on CUDA (the cap is a ``score_mod``; at head sizes up to 256) and on the
explicit kernel on CPU.
Analysis weights: the softmax probabilities of the capped logits.
"""

from __future__ import annotations

from dataclasses import dataclass

from attnlab.attention import AttentionSpec
from attnlab.config import ModelConfig
from variants.baseline import BaselineAttention
from variants.registry import register


@register("softcap")
class SoftcapAttention(BaselineAttention):
    """Attention logits soft-capped to (-c, c) by c * tanh(s / c) before the softmax."""

    paper = "Gemma Team 2024, Gemma 2: Improving Open Language Models at a Practical Size"

    @dataclass(frozen=True)
    class Options:
        cap: float = 50.0  # c; Gemma 2's value for attention logits

        def __post_init__(self) -> None:
            if not self.cap > 0:
                raise ValueError(f"option cap must be positive, got {self.cap}")

    @classmethod
    def attention_spec(cls, config: ModelConfig) -> AttentionSpec:
        return AttentionSpec(softcap=cls.options(config).cap)

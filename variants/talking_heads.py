"""``talking_heads``: learned mixing across heads before and after the softmax.

Shazeer et al. 2020, "Talking-Heads Attention". With logits L_h = q_h k_h^T / sqrt(hs)
for heads h = 1..H and learned H x H matrices P_l, P_w:

    L'_g = sum_h P_l[h, g] L_h       (mask)      W_g = softmax(L'_g)
    U_g  = sum_h P_w[h, g] W_h                   y_g = U_g v_g

Both matrices start at the identity, so training starts from plain multi-head
attention. (The paper also allows different head counts for the logits, the softmax and
the values; here all three are n_head, the baseline's shape.)

Mixing across heads is not expressible to a fused kernel, so the block computes its
attention itself (explicit kernel only); under bf16-mixed both mixes and the softmax run in fp32,
outside autocast, on every device. Needs ``n_head >= 2``.
Extra parameters per layer: 2 * n_head^2. Analysis weights: U (the mixed weights that
multiply the values); a row need not sum to one.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from attnlab.attention import ScoreTerms, allowed_mask
from attnlab.config import ModelConfig
from variants.baseline import BaselineAttention
from variants.registry import register


@register("talking_heads")
class TalkingHeadsAttention(BaselineAttention):
    """Logits mixed across heads before the softmax, weights mixed again after it."""

    paper = "Shazeer et al. 2020, Talking-Heads Attention"
    weights_are_distributions = False
    kernels = ("explicit",)

    @classmethod
    def unsupported(cls, config: ModelConfig) -> str | None:
        if config.n_head < 2:
            return f"talking_heads mixes across heads, so it needs model.n_head >= 2; got {config.n_head}"
        return None

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.logits_mix = nn.Parameter(torch.eye(config.n_head))  # P_l (H, H)
        self.weights_mix = nn.Parameter(torch.eye(config.n_head))  # P_w (H, H)

    def init_parameter(self, name: str, param: Tensor, generator: torch.Generator) -> bool:
        if name not in ("logits_mix", "weights_mix"):
            return False
        param.copy_(torch.eye(self.n_head))
        return True

    def flops_per_token(self, seq_len: int) -> float:
        # Two (H x H) mixes of (H, seq_len) maps per token, forward and backward.
        return super().flops_per_token(seq_len) + 12.0 * self.n_head * self.n_head * seq_len

    def attend(self, q: Tensor, k: Tensor, v: Tensor, terms: ScoreTerms, q_offset: int,
               need_weights: bool) -> tuple[Tensor, Tensor | None]:
        H, G = q.shape[1], k.shape[1]
        if G != H:  # repeat_interleave copies even by 1: autograd would keep a second k and v
            k, v = k.repeat_interleave(H // G, dim=1), v.repeat_interleave(H // G, dim=1)
        exact = torch.promote_types(q.dtype, torch.float32)  # mix and normalise in >= fp32
        logits = q @ k.transpose(-2, -1)  # (B, H, T, S)
        # Autocast off: it would run the mixing matmuls in bf16, and the softmax in fp32 on CUDA but
        # bf16 on CPU, so the maps kept for the backward (and the plan, which reads them off a CPU
        # step) would differ between the two.
        with torch.autocast(q.device.type, enabled=False):
            logits = _mix_heads(logits.to(exact) * self.scale, self.logits_mix.to(exact))
            T, S = logits.shape[-2:]
            logits = logits.masked_fill(~allowed_mask(T, S, q_offset, None, q.device), float("-inf"))
            weights = _mix_heads(torch.softmax(logits, dim=-1), self.weights_mix.to(exact))
        y = weights.to(v.dtype) @ v
        return y, (weights if need_weights else None)


def _mix_heads(maps: Tensor, mix: Tensor) -> Tensor:
    """out[b, g] = sum_h mix[h, g] * maps[b, h] for (B, H, T, S) maps. A matmul over the maps
    flattened to (B, H, T * S) keeps them as they are for the backward; an einsum would keep a
    second, heads-last copy of each (B, H, T, S) map."""
    B, H, T, S = maps.shape
    return torch.bmm(mix.t().expand(B, -1, -1), maps.reshape(B, H, T * S)).view(B, -1, T, S)

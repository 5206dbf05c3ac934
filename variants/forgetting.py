"""``forgetting``: Forgetting Attention, softmax attention with a data-dependent forget gate.

Lin et al. 2025, "Forgetting Transformer: Softmax Attention with a Forget Gate" (ICLR 2025).
Each head h has a scalar forget gate per position t, computed from the block input x_t,

    f_t = sigmoid(w_f . x_t + b_f)                     (a Linear C -> n_head, with bias)

and the logit of query i on key j is down-weighted by the gates in between:

    s_ij = q_i . k_j / sqrt(hs) + sum_{l=j+1..i} log f_l = q_i . k_j / sqrt(hs) + c_i - c_j
    c_t = sum_{l<=t} log f_l                            (cumulative log-sigmoid, float32)

so the term is separable: c_i for the query, -c_j for the key. As in the paper, the
model has no positional embedding (RoPE off): the gates carry the recency. While
decoding, c of every position is kept in the KV cache (``forget_cumsum``) and new tokens
continue the cumulative sum from the last cached position, so decoding adds exactly what
the full forward adds.

The forget gate's weights start N(0, init_std). Its bias, by ``gate_bias_init``:
    ``zero`` (default): 0, as the authors' code starts the data-dependent gate (f = 1/2 for
        x = 0), attnlab's default init, so earlier results keep their numbers;
    ``constant``: every head's bias is ``gate_bias``;
    ``range``: the authors' init of their data-independent gates (``fgate_bias_init``): head
        h of H gets decay time T_h, log-spaced from ``decay_time_min`` to ``decay_time_max``,
        and the bias with -1 / log sigmoid(b_h) = T_h, i.e. b_h = -log(expm1(1 / T_h)); a
        gate of sigmoid(b_h) halves the weight of a key every T_h log 2 tokens. The authors'
        code has no default T_min, T_max (both must be set); 2 and 256 are attnlab's.

Further options, the "Pro" block's output extras (the paper's FoX (Pro); its QK-norm and key/value
shifts are not included here):
    ``output_norm``: RMSNorm of each head's output over its head_size channels, with a
        gain per channel (H * hs gains, as the authors' group RMSNorm);
    ``output_gate``: y * sigmoid(x W_o), one gate per channel, before the output
        projection (as ``gated_attn``; W_o follows the model-wide ``bias`` flag).
    Both on: y' = RMSNorm_per_head(y) * sigmoid(x W_o).

Extra parameters per layer: C * H + H (forget gate), + C * H * hs with ``output_gate``,
+ H * hs with ``output_norm``. Analysis weights: the softmax probabilities of the gated
logits; each query's row sums to one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnlab.attention import AttentionSpec, KVCache, ScoreTerms
from attnlab.config import ModelConfig
from variants.baseline import BaselineAttention
from variants.registry import register

GATE_BIAS_INITS = ("zero", "constant", "range")


class HeadRMSNorm(nn.Module):
    """RMSNorm over each head's channels of (..., H * hs), with one gain per channel (H * hs),
    computed in at least fp32 (as ``attnlab.norm.RMSNorm``)."""

    def __init__(self, n_head: int, head_size: int, eps: float) -> None:
        super().__init__()
        self.n_head, self.eps = n_head, eps
        self.weight = nn.Parameter(torch.ones(n_head * head_size))

    def forward(self, y: Tensor) -> Tensor:
        y32 = y.unflatten(-1, (self.n_head, -1)).to(torch.promote_types(y.dtype, torch.float32))
        normed = y32 * torch.rsqrt(y32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (normed.flatten(-2) * self.weight).to(y.dtype)


@register("forgetting")
class ForgettingAttention(BaselineAttention):
    """No RoPE; logits get the sum of log forget gates sigmoid(w_f . x + b_f) between key and query."""

    paper = "Lin et al. 2025, Forgetting Transformer: Softmax Attention with a Forget Gate (ICLR 2025)"
    model_settings = {"rotary_percentage": 0.0}

    @dataclass(frozen=True)
    class Options:
        output_gate: bool = False  # FoX (Pro): y * sigmoid(x W_o) before the output projection
        output_norm: bool = False  # FoX (Pro): per-head RMSNorm of the attention output
        gate_bias_init: str = "zero"  # zero | constant (gate_bias) | range (decay_time_min..max)
        gate_bias: float = 0.0  # the forget gate's bias under gate_bias_init=constant
        decay_time_min: float = 2.0  # range: the first head's decay time, in tokens
        decay_time_max: float = 256.0  # range: the last head's decay time, in tokens

        def __post_init__(self) -> None:
            if self.gate_bias_init not in GATE_BIAS_INITS:
                raise ValueError(f"option gate_bias_init must be one of {', '.join(GATE_BIAS_INITS)}, "
                                 f"got {self.gate_bias_init!r}")
            if not math.isfinite(self.gate_bias):
                raise ValueError(f"option gate_bias must be finite, got {self.gate_bias}")
            if self.gate_bias != 0.0 and self.gate_bias_init != "constant":
                raise ValueError(f"option gate_bias={self.gate_bias} is only used with gate_bias_init=constant, "
                                 f"got gate_bias_init={self.gate_bias_init!r}")
            if not 0 < self.decay_time_min <= self.decay_time_max < math.inf:
                raise ValueError(f"options decay_time_min, decay_time_max must satisfy 0 < min <= max < inf, "
                                 f"got {self.decay_time_min}, {self.decay_time_max}")

    @classmethod
    def attention_spec(cls, config: ModelConfig) -> AttentionSpec:
        return AttentionSpec(separable_terms=True)

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        options = self.options(config)
        self.forget_gate = nn.Linear(config.n_embd, config.n_head, bias=True)
        self.gate_options = options
        H, hs = config.n_head, config.head_size
        self.output_norm = HeadRMSNorm(H, hs, config.norm_eps) if options.output_norm else None
        self.out_gate = nn.Linear(config.n_embd, H * hs, bias=config.bias) if options.output_gate else None

    def init_parameter(self, name: str, param: Tensor, generator: torch.Generator) -> bool:
        o = self.gate_options
        if name != "forget_gate.bias" or o.gate_bias_init == "zero":
            return False
        if o.gate_bias_init == "constant":
            param.fill_(o.gate_bias)
        else:
            decay_time = torch.logspace(math.log10(o.decay_time_min), math.log10(o.decay_time_max), param.numel(),
                                        dtype=torch.float64)
            param.copy_(-torch.log(torch.expm1(1 / decay_time)))
        return True

    def score_terms(self, x: Tensor, q_offset: int, n_keys: int, kv_cache: KVCache | None) -> ScoreTerms:
        logits = self.forget_gate(x).transpose(1, 2)  # (B, H, T)
        c = F.logsigmoid(logits.to(torch.promote_types(logits.dtype, torch.float32))).cumsum(-1)
        if kv_cache is None:
            return ScoreTerms(query=c, key=-c)
        # The cache was appended before this call: the new tokens are positions q_offset..
        if q_offset > 0:
            c = c + kv_cache.extra["forget_cumsum"][..., q_offset - 1:q_offset]
        return ScoreTerms(query=c, key=-kv_cache.extend("forget_cumsum", c))  # (B, H, T), (B, H, S)

    def project_output(self, y: Tensor, x: Tensor) -> Tensor:
        if self.output_norm is not None:
            y = self.output_norm(y)
        if self.out_gate is not None:
            y = y * torch.sigmoid(self.out_gate(x))
        return self.proj(y)

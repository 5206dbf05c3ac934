"""``gated_attn``: a sigmoid gate on the attention output, computed from the block input.

Qiu et al. 2025, "Gated Attention for Large Language Models" (their best position, G1):

    Y' = Y * sigmoid(X W_g)        before the output projection

X is the block's normed input (B, T, C) and Y the attention output (B, T, H * hs).
``granularity=elementwise`` (default, the paper's best): W_g is C x (H * hs), one gate per
channel; ``headwise``: W_g is C x H, one gate per head, shared by its head_size channels.
The gate makes the map non-linear and sparse, which removes the attention sink.
W_g follows the model-wide ``bias`` flag.

Extra parameters per layer: C * H * hs (elementwise) or C * H (headwise).
Analysis weights: the softmax probabilities (the gate acts after them, on the output).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from attnlab.config import ModelConfig
from variants.baseline import BaselineAttention
from variants.registry import register


@register("gated_attn")
class GatedAttention(BaselineAttention):
    """Attention output times sigmoid(x W_g), per channel or per head, before the projection."""

    paper = "Qiu et al. 2025, Gated Attention for Large Language Models"

    @dataclass(frozen=True)
    class Options:
        granularity: Literal["elementwise", "headwise"] = "elementwise"

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.headwise = self.options(config).granularity == "headwise"
        width = config.n_head if self.headwise else config.n_head * config.head_size
        self.gate = nn.Linear(config.n_embd, width, bias=config.bias)

    def project_output(self, y: Tensor, x: Tensor) -> Tensor:
        gate = torch.sigmoid(self.gate(x))  # (B, T, H) or (B, T, H * hs)
        if self.headwise:
            y = (y.unflatten(-1, (self.n_head, self.head_size)) * gate.unsqueeze(-1)).flatten(-2)
        else:
            y = y * gate
        return self.proj(y)

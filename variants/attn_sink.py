"""``attn_sink``: a learned per-head sink logit in the softmax denominator (as in gpt-oss).

    w_ij = exp(s_ij) / (sum_{j' <= i} exp(s_ij') + exp(a_h)),   s_ij = q_i . k_j / sqrt(hs)

a_h is one learned logit per head (its start: ``sink_init`` below): the head can put mass
exp(a_h) on "no key", so it need not dump attention on the first token when nothing is
relevant (OpenAI 2025, "gpt-oss-120b & gpt-oss-20b Model Card"; Xiao et al. 2024 on attention
sinks).
``learned=false`` fixes a_h = 0: the "off-by-one" softmax (Miller 2023, "Attention Is Off
By One"), with no parameter.

Option ``sink_init``: ``trunc_normal`` (default) draws a learned a_h from N(0, std^2)
truncated to [-2, 2], std = init_std / sqrt(2 * (l + 1)) for the layer at 0-based depth l,
as torchtitan's gpt-oss does (there with init_std 0.02, its depth-scaled std of the block's
weights; the model card gives no training init); ``zero`` starts every a_h at 0, the
off-by-one softmax, as ``reference/zoo`` and ``reference/recall`` were trained.

Extra parameters: n_head per layer (none with ``learned=false``). SDPA runs it as one more
key with logit a_h and value 0 (in its float mask); FlexAttention scales its output by
sigmoid(lse - a_h). Analysis weights: the probabilities of the real keys; a row sums to
1 - (the sink's share), less than one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from attnlab.attention import AttentionSpec, KVCache, ScoreTerms
from attnlab.config import ModelConfig
from variants.baseline import BaselineAttention
from variants.registry import register


@register("attn_sink")
class AttentionSinkAttention(BaselineAttention):
    """A learned per-head logit adds exp(a_h) to the softmax denominator."""

    paper = "OpenAI 2025, gpt-oss-120b & gpt-oss-20b Model Card (learned attention sinks)"
    weights_are_distributions = False

    @dataclass(frozen=True)
    class Options:
        learned: bool = True  # false: the fixed off-by-one softmax (a_h = 0)
        sink_init: Literal["trunc_normal", "zero"] = "trunc_normal"  # a learned a_h's start

    @classmethod
    def attention_spec(cls, config: ModelConfig) -> AttentionSpec:
        return AttentionSpec(normaliser="softmax_sink")

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.sink_init, self.sink_init_std = self.options(config).sink_init, config.init_std
        if self.options(config).learned:
            self.sink = nn.Parameter(torch.zeros(config.n_head))  # a_h
        else:
            self.register_buffer("sink", torch.zeros(config.n_head), persistent=False)

    def init_parameter(self, name: str, param: Tensor, generator: torch.Generator) -> bool:
        if name != "sink":
            return False
        if self.sink_init == "zero":
            param.zero_()  # start as the off-by-one softmax
        else:
            std = self.sink_init_std / math.sqrt(2 * (self.layer_idx + 1))
            nn.init.trunc_normal_(param, std=std, a=-2.0, b=2.0, generator=generator)
        return True

    def score_terms(self, x: Tensor, q_offset: int, n_keys: int, kv_cache: KVCache | None) -> ScoreTerms:
        return ScoreTerms(sink=self.sink)

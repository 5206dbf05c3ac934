"""``sigmoid_attn``: sigmoid instead of softmax, with a bias, no normalisation.

Ramapuram et al. 2024, "Theory, Analysis, and Best Practices for Sigmoid Self-Attention":

    w_ij = sigmoid(q_i . k_j / sqrt(hs) + b),   b = -log(n),   y_i = sum_{j <= i} w_ij v_j

The bias starts the weights near 1/n, so that their sum is of order one as with a softmax.
Option ``n``: ``seq_len`` (default, the authors' choice: the training sequence length, the
run's ``trainer.seq_len``, written into the run's configuration as a number; a model built
outside a training run takes ``block_size``), ``block_size`` (the model's context, what
attnlab used before and what ``reference/zoo`` was trained with: it differs whenever
``trainer.seq_len < block_size``), or a number. n is fixed, not the length of the current
call, so that KV-cache decoding equals the full forward.

Option ``qk_norm`` (default true, as in the authors' recommended configurations): RMSNorm
per head on q and k before RoPE with learned gains, the same as the ``qk_norm`` variant
(attnlab's form of QK-norm, not checked against the authors' norm); false (as in
``reference/zoo`` and ``reference/recall``) leaves the normaliser the only change.

Extra parameters: 2 * head_size per layer with ``qk_norm``, else none. SDPA and
FlexAttention always normalise with a softmax, so the variant runs on the explicit kernel
(``auto`` picks it). Analysis weights: the sigmoid weights; a query's row does not sum to one.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

from torch import Tensor

from attnlab.attention import AttentionSpec
from attnlab.config import ModelConfig
from attnlab.norm import RMSNorm
from variants.baseline import BaselineAttention
from variants.registry import register


@register("sigmoid_attn")
class SigmoidAttention(BaselineAttention):
    """sigmoid(q.k / sqrt(d) - log n) weights, unnormalised, in place of the softmax."""

    paper = "Ramapuram et al. 2024, Theory, Analysis, and Best Practices for Sigmoid Self-Attention"
    weights_are_distributions = False

    @dataclass(frozen=True)
    class Options:
        n: Literal["seq_len", "block_size"] | int = "seq_len"  # n in b = -log n
        qk_norm: bool = True  # RMSNorm per head on q and k (the authors' recommendation)

        def __post_init__(self) -> None:
            if isinstance(self.n, int) and self.n < 1:
                raise ValueError(f"option n must be seq_len, block_size or a positive integer, got {self.n}")

    @classmethod
    def bind_options(cls, options: Options, seq_len: int | None) -> Options:
        if options.n == "seq_len" and seq_len is not None:
            return dataclasses.replace(options, n=seq_len)
        return options

    @classmethod
    def attention_spec(cls, config: ModelConfig) -> AttentionSpec:
        n = cls.options(config).n
        if not isinstance(n, int):  # block_size, or seq_len outside a training run
            n = config.block_size
        return AttentionSpec(normaliser="sigmoid", sigmoid_bias=-math.log(n))

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.qk_norm = self.options(config).qk_norm
        if self.qk_norm:
            self.q_norm = RMSNorm(config.head_size, eps=config.norm_eps)
            self.k_norm = RMSNorm(config.head_size, eps=config.norm_eps)

    def transform_qk(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        if not self.qk_norm:
            return q, k
        return self.q_norm(q), self.k_norm(k)

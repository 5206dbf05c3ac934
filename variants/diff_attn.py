"""``diff_attn``: differential attention, the difference of two softmax maps.

Ye et al. 2024, "Differential Transformer". Each differential head i splits its query
and key into two halves (q1, q2, k1, k2, each of head_size channels) and shares a value
of 2 * head_size channels:

    A_i = softmax(q1 k1^T / sqrt(hs)) - lambda * softmax(q2 k2^T / sqrt(hs))
    lambda = exp(lq1 . lk1) - exp(lq2 . lk2) + lambda_init
    lambda_init = 0.8 - 0.6 * exp(-0.3 * (l - 1))        l = 1, 2, ... the layer's depth
    head_i = (1 - lambda_init) * RMSNorm(A_i v)          (RMSNorm over the head's 2 * hs)

lq1, lk1, lq2, lk2 are learned vectors of head_size per layer (init N(0, 0.1)). The
model has n_head / 2 differential heads, each twice the baseline's head size, so the
q, k, v and output projections keep the baseline's shapes and parameter count (the
fused Linear's head 2i is q1 of differential head i, head 2i + 1 its q2; value heads
2g and 2g + 1 together form the value of key group g, shared by the differential heads
of that group).

Options. ``kv_pairing``, which key heads the two maps use under GQA (r = n_head /
n_query_groups differential heads per key group; the same with MHA, r = 1):
``authors`` (default): as the authors' code (microsoft/unilm Diff-Transformer), whose key
heads are repeated r times each and then taken in pairs like the queries, so map m of
differential head i uses key head (2i + m) // r: with r even both maps share one key head.
``separate``: map m of head i uses key head 2g + m of its group g = i // r, so the two maps
always have their own keys, as the paper's formula (attnlab's form before, as
``reference/zoo`` and ``reference/recall`` were trained). ``sub_norm_eps``: the RMSNorm's
eps, 1e-5 (default) as the authors fix it; null: the model's ``norm_eps`` (as before).

Each softmax map runs on the chosen kernel (fused SDPA/FlexAttention), so the cost is
two attention calls. Needs an even ``n_head`` and ``n_query_groups`` (no MQA).
Extra parameters per layer: 4 * head_size (lambda) + 2 * head_size (RMSNorm gain).
Analysis weights: A_i = map1 - lambda * map2 per differential head, (B, n_head / 2, T, S);
entries can be negative and a row sums to 1 - lambda.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from attnlab.attention import ScoreTerms, attend
from attnlab.config import ModelConfig
from attnlab.norm import RMSNorm
from variants.baseline import BaselineAttention
from variants.registry import register

LAMBDA_INIT_STD = 0.1


def lambda_init(depth: Tensor, dtype: torch.dtype) -> Tensor:
    """The paper's lambda_init for the layer at 0-based index ``depth``, as ``dtype``."""
    return _exact_lambda_init(depth).to(dtype)


def _exact_lambda_init(depth: Tensor) -> Tensor:
    """In float64 (float32 on Apple's MPS, which has no float64), to be rounded once to the dtype
    used, as a Python float is."""
    exact = torch.float32 if depth.device.type == "mps" else torch.float64
    return 0.8 - 0.6 * torch.exp(-0.3 * depth.to(exact))


@register("diff_attn")
class DiffAttention(BaselineAttention):
    """Two softmax maps from split q/k; their lambda-weighted difference, normed per head."""

    paper = "Ye et al. 2024, Differential Transformer"
    weights_are_distributions = False
    value_head_factor = 2  # each map attends over value pairs (2 * head_size): no flash kernel
    kernels = None  # its attend calls the run's kernel, once per map

    @dataclass(frozen=True)
    class Options:
        kv_pairing: Literal["authors", "separate"] = "authors"  # under GQA: see the module docstring
        sub_norm_eps: float | None = 1e-5  # None: model.norm_eps

        def __post_init__(self) -> None:
            if self.sub_norm_eps is not None and not self.sub_norm_eps > 0:
                raise ValueError(f"option sub_norm_eps must be positive or null, got {self.sub_norm_eps}")

    @classmethod
    def unsupported(cls, config: ModelConfig) -> str | None:
        if config.n_head % 2 or config.n_query_groups % 2:
            return (f"diff_attn pairs the baseline's heads into n_head / 2 differential heads, so it "
                    f"needs an even model.n_head and model.n_query_groups (no MQA); got n_head="
                    f"{config.n_head}, n_query_groups={config.n_query_groups}")
        return None

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        hs = config.head_size
        self.lambda_q1, self.lambda_k1 = nn.Parameter(torch.zeros(hs)), nn.Parameter(torch.zeros(hs))
        self.lambda_q2, self.lambda_k2 = nn.Parameter(torch.zeros(hs)), nn.Parameter(torch.zeros(hs))
        options = self.options(config)
        self.share_keys = options.kv_pairing == "authors"
        self.sub_norm = RMSNorm(2 * hs, eps=options.sub_norm_eps or config.norm_eps)
        # The depth as a tensor, not a Python int: a compiled block would specialise on an int,
        # compiling once per layer instead of once for all (an integer: no dtype cast touches it).
        self.register_buffer("depth", torch.zeros((), dtype=torch.long), persistent=False)

    @property
    def layer_idx(self) -> int:
        return int(self.depth)

    @layer_idx.setter
    def layer_idx(self, depth: int) -> None:
        self.depth.fill_(depth)

    def init_parameter(self, name: str, param: Tensor, generator: torch.Generator) -> bool:
        if not name.startswith("lambda_"):
            return False
        param.copy_(torch.randn(param.shape, generator=generator) * LAMBDA_INIT_STD)
        return True

    def flops_per_token(self, seq_len: int) -> float:
        # Two maps of n_head/2 heads: q.k^T as the baseline's; each map's probs.v over values
        # of 2 * hs, twice the baseline's: 6 * H * hs * seq_len more (forward + backward).
        return super().flops_per_token(seq_len) + 6.0 * self.n_head * self.head_size * seq_len

    def differential_lambda(self) -> Tensor:
        return (torch.exp(torch.dot(self.lambda_q1, self.lambda_k1))
                - torch.exp(torch.dot(self.lambda_q2, self.lambda_k2))
                + lambda_init(self.depth, self.lambda_q1.dtype))

    def output_scale(self) -> Tensor:
        """1 - lambda_init, a 0-dim tensor of the parameters' dtype."""
        return (1.0 - _exact_lambda_init(self.depth)).to(self.lambda_q1.dtype)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, terms: ScoreTerms, q_offset: int,
               need_weights: bool) -> tuple[Tensor, Tensor | None]:
        B, G, S, hs = v.shape
        v_pair = v.reshape(B, G // 2, 2, S, hs).transpose(2, 3).reshape(B, G // 2, S, 2 * hs)
        r = self.n_head // G  # differential heads per key group
        if self.share_keys and r > 1:
            # The authors' order: key head j serves query head j after each is repeated r times.
            k, v_pair = k.repeat_interleave(r, dim=1), v_pair.repeat_interleave(r, dim=1)  # (B, H, S, hs)
        maps = [attend(q[:, half::2], k[:, half::2], v_pair, self.spec, terms, kernel=self.kernel,
                       scale=self.scale, q_offset=q_offset, need_weights=need_weights)
                for half in (0, 1)]  # each y: (B, H/2, T, 2hs)
        lam = self.differential_lambda()
        y = maps[0][0] - lam.to(v.dtype) * maps[1][0]
        y = self.sub_norm(y) * self.output_scale()
        weights = maps[0][1] - lam * maps[1][1] if need_weights else None
        return y, weights

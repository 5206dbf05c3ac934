"""``baseline``: the unchanged LLaMA-2 attention block of the study (SEED.md).

One fused Linear C -> (H + 2G) * head_size produces q, k, v; RoPE rotates q
and k; y = softmax(q k^T / sqrt(head_size) + causal mask) v; a Linear maps y
back to C. Biases follow the model-wide ``bias`` flag (off by default).

The other seed variants subclass this block and override one of its hooks
(``project_qkv``, ``project_output``, ``logits_term``), so each file shows only
what that variant changes.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from attnlab.attention import AttentionOutput, KVCache, apply_rope, get_kernel
from attnlab.config import ModelConfig
from variants.registry import AttentionBlock, register


@register("baseline")
class BaselineAttention(AttentionBlock):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.n_query_groups = config.n_query_groups
        self.head_size = config.head_size
        qkv_width = (config.n_head + 2 * config.n_query_groups) * config.head_size
        self.qkv = nn.Linear(config.n_embd, qkv_width, bias=config.bias)
        self.proj = nn.Linear(config.n_head * config.head_size, config.n_embd, bias=config.bias)
        self.kernel = get_kernel(config.attn_kernel)
        self.scale = 1.0 / math.sqrt(config.head_size)

    def flops_per_token(self, seq_len: int) -> float:
        # PaLM's attention term: q.k^T and probs.v, 2 FLOPs per multiply-add forward and 4
        # backward, over all seq_len keys (the causal half is not subtracted).
        return super().flops_per_token(seq_len) + 12.0 * self.n_head * self.head_size * seq_len

    def project_qkv(self, x: Tensor) -> Tensor:
        """(B, T, C) -> (B, T, (H + 2G) * hs), the q, k, v channels side by side."""
        return self.qkv(x)

    def project_output(self, y: Tensor) -> Tensor:
        """(B, T, H * hs) -> (B, T, C)."""
        return self.proj(y)

    def logits_term(self, x: Tensor, n_keys: int) -> Tensor | None:
        """Optional term added to the scaled logits, broadcastable to (B, H, T, n_keys)."""
        return None

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, kv_cache: KVCache | None = None,
                need_weights: bool = False) -> AttentionOutput:
        B, T, _ = x.shape
        H, G, hs = self.n_head, self.n_query_groups, self.head_size
        q, k, v = self.project_qkv(x).split([H * hs, G * hs, G * hs], dim=-1)
        q = apply_rope(q.view(B, T, H, hs).transpose(1, 2), cos, sin)  # (B, H, T, hs)
        k = apply_rope(k.view(B, T, G, hs).transpose(1, 2), cos, sin)  # (B, G, T, hs)
        v = v.view(B, T, G, hs).transpose(1, 2)  # (B, G, T, hs)
        q_offset = 0
        if kv_cache is not None:
            q_offset = kv_cache.length
            k, v = kv_cache.append(k, v)  # (B, G, S, hs)
        additive = self.logits_term(x, n_keys=k.shape[2])
        y, probs = self.kernel(q, k, v, scale=self.scale, q_offset=q_offset, additive=additive,
                               need_weights=need_weights)
        y = y.transpose(1, 2).reshape(B, T, H * hs)
        return AttentionOutput(self.project_output(y), probs)

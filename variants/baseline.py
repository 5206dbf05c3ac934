"""``baseline``: the unchanged LLaMA-2 attention block of the study (docs/study.md).

One fused Linear C -> (H + 2G) * head_size produces q, k, v; RoPE rotates q
and k; y = softmax(q k^T / sqrt(head_size) + causal mask) v; a Linear maps y
back to C. Biases follow the model-wide ``bias`` flag (off by default).
Analysis weights: the softmax probabilities; each query's row sums to one.

Most variants subclass this block and override one of its steps, so each file
shows only what that variant changes:

- ``project_qkv(x)``: the fused q, k, v channels (``gelu_bias``, ``sep_qkv``);
- ``transform_qk(q, k)``: per-head q and k before RoPE (``qk_norm``);
- ``attention_spec(config)`` and ``score_terms(x, q_offset, n_keys, kv_cache)``: what the
  attention computes, as data the kernels understand (``qk_scale``, ``sigmoid_attn``);
- ``attend(q, k, v, terms, q_offset, need_weights)``: attention that no description
  can say, e.g. two maps (``diff_attn``) or mixing across heads (``talking_heads``);
- ``project_output(y, x)``: back to C, with the block input at hand (``gated_attn``).
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from attnlab.attention import NO_TERMS, AttentionOutput, KVCache, ScoreTerms, apply_rope, attend
from attnlab.config import ModelConfig
from variants.registry import AttentionBlock, register


@register("baseline")
class BaselineAttention(AttentionBlock):
    """Multi-head causal softmax attention with RoPE (LLaMA 2); GQA/MQA via n_query_groups."""

    paper = "Touvron et al. 2023, Llama 2 (the study's unchanged block)"

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.n_query_groups = config.n_query_groups
        self.head_size = config.head_size
        qkv_width = (config.n_head + 2 * config.n_query_groups) * config.head_size
        self.qkv = nn.Linear(config.n_embd, qkv_width, bias=config.bias)
        self.proj = nn.Linear(config.n_head * config.head_size, config.n_embd, bias=config.bias)
        self.spec = self.attention_spec(config)
        self.kernel = config.attn_kernel
        self.scale = 1.0 / math.sqrt(config.head_size)

    def flops_per_token(self, seq_len: int) -> float:
        # PaLM's attention term: q.k^T and probs.v, 2 FLOPs per multiply-add forward and 4
        # backward, over all seq_len keys (the causal half is not subtracted).
        return super().flops_per_token(seq_len) + 12.0 * self.n_head * self.head_size * seq_len

    def project_qkv(self, x: Tensor) -> Tensor:
        """(B, T, C) -> (B, T, (H + 2G) * hs), the q, k, v channels side by side."""
        return self.qkv(x)

    def transform_qk(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        """q (B, H, T, hs) and k (B, G, T, hs) before RoPE; unchanged here."""
        return q, k

    def score_terms(self, x: Tensor, q_offset: int, n_keys: int, kv_cache: KVCache | None) -> ScoreTerms:
        """Tensors added to the logits (see ``attnlab.attention.ScoreTerms``); none here.
        x: the block input (B, T, C); its first token is at absolute position q_offset, and
        the keys are positions 0..n_keys-1. A term that depends on earlier tokens keeps what
        it needs in ``kv_cache.extra`` when decoding (see ``forgetting``)."""
        return NO_TERMS

    def attend(self, q: Tensor, k: Tensor, v: Tensor, terms: ScoreTerms, q_offset: int,
               need_weights: bool) -> tuple[Tensor, Tensor | None]:
        """(B, H, T, hs), (B, G, S, hs) x 2 -> y (B, H, T, hs) on the chosen kernel."""
        return attend(q, k, v, self.spec, terms, kernel=self.kernel, scale=self.scale,
                      q_offset=q_offset, need_weights=need_weights)

    def project_output(self, y: Tensor, x: Tensor) -> Tensor:
        """y (B, T, H * hs) -> (B, T, C); x is the block input (B, T, C)."""
        return self.proj(y)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, kv_cache: KVCache | None = None,
                need_weights: bool = False) -> AttentionOutput:
        B, T, _ = x.shape
        H, G, hs = self.n_head, self.n_query_groups, self.head_size
        q, k, v = self.project_qkv(x).split([H * hs, G * hs, G * hs], dim=-1)
        q, k = self.transform_qk(q.view(B, T, H, hs).transpose(1, 2), k.view(B, T, G, hs).transpose(1, 2))
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)  # (B, H, T, hs), (B, G, T, hs)
        v = v.view(B, T, G, hs).transpose(1, 2)  # (B, G, T, hs)
        q_offset = 0
        if kv_cache is not None:
            q_offset = kv_cache.length
            k, v = kv_cache.append(k, v)  # (B, G, S, hs)
        terms = self.score_terms(x, q_offset, k.shape[2], kv_cache)
        y, weights = self.attend(q, k, v, terms, q_offset, need_weights)
        y = y.transpose(1, 2).reshape(B, T, -1)
        return AttentionOutput(self.project_output(y, x), weights)

"""Inner attention kernels, RoPE and the KV cache shared by every attention variant.

A variant (``variants/<name>.py``) owns its projections; it hands q, k, v and
an optional additive logits term to one of the kernels below, which all share
one signature (as in transformers' ``ALL_ATTENTION_FUNCTIONS``):

    kernel(q, k, v, *, scale, q_offset, additive=None, need_weights=False)
        -> (y, probs | None)

    q: (B, H, T, hs)   k, v: (B, G, S, hs) with H % G == 0
    q_offset: absolute position of the first query minus that of the first key,
              so query i may attend keys j <= q_offset + i (causal).
    additive: float logits term broadcastable to (B, H, T, S), added to the
              scaled q.k^T before the mask and the softmax.
    y: (B, H, T, hs)   probs: (B, H, T, S), only from the explicit kernel.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


class AttentionOutput(NamedTuple):
    """What an attention block returns: the output and, only when asked, the probabilities."""

    output: Tensor  # (B, T, C)
    weights: Tensor | None  # (B, H, T, S) softmax probabilities, or None


def causal_mask(T: int, S: int, q_offset: int, device: torch.device) -> Tensor:
    """Boolean (T, S) mask, True where query i may attend key j (j <= q_offset + i)."""
    q_pos = torch.arange(T, device=device).unsqueeze(1) + q_offset
    k_pos = torch.arange(S, device=device).unsqueeze(0)
    return k_pos <= q_pos


def explicit_attention(q: Tensor, k: Tensor, v: Tensor, *, scale: float, q_offset: int,
                       additive: Tensor | None = None, need_weights: bool = False
                       ) -> tuple[Tensor, Tensor | None]:
    """The study's unfused softmax attention; the reference for tests and heatmaps."""
    H, G = q.shape[1], k.shape[1]
    if H != G:
        k = k.repeat_interleave(H // G, dim=1)
        v = v.repeat_interleave(H // G, dim=1)
    # Softmax in fp32 so that bf16 runs and analysis give comparable probabilities.
    scores = (q @ k.transpose(-2, -1)).float() * scale  # (B, H, T, S)
    if additive is not None:
        scores = scores + additive.float()
    T, S = scores.shape[-2:]
    scores = scores.masked_fill(~causal_mask(T, S, q_offset, q.device), float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    y = probs.to(v.dtype) @ v
    return y, (probs if need_weights else None)


def sdpa_attention(q: Tensor, k: Tensor, v: Tensor, *, scale: float, q_offset: int,
                   additive: Tensor | None = None, need_weights: bool = False
                   ) -> tuple[Tensor, Tensor | None]:
    """Fused ``scaled_dot_product_attention``; the training path of every variant."""
    if need_weights:
        return explicit_attention(q, k, v, scale=scale, q_offset=q_offset, additive=additive,
                                  need_weights=True)
    T, S = q.shape[-2], k.shape[-2]
    gqa = q.shape[1] != k.shape[1]
    if additive is None and q_offset == 0 and T == S:
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=gqa)
    elif additive is None and T == 1:  # one new token attends the whole cache
        y = F.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=gqa)
    elif additive is None:  # a chunk of several tokens after a KV cache
        mask = causal_mask(T, S, q_offset, q.device)  # boolean: True where attending
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=gqa)
    else:
        # A float mask carries both the causal -inf and the variant's trainable term, so
        # gradients reach the term while the kernel stays fused. One masked_fill builds it
        # (the same values as zeros, -inf fill and add, in one pass over (B, 1, T, S)).
        mask = additive.to(q.dtype).masked_fill(~causal_mask(T, S, q_offset, q.device), float("-inf"))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=gqa)
    return y, None


# Why ``flex`` only trains on CUDA; every refusal (kernel, train(), bench) gives this reason.
FLEX_CPU_LIMIT = (f"FlexAttention has no CPU backward in torch {torch.__version__}; use "
                  f"model.attn_kernel=sdpa (the default) or train on a CUDA GPU")


def flex_attention_kernel(q: Tensor, k: Tensor, v: Tensor, *, scale: float, q_offset: int,
                          additive: Tensor | None = None, need_weights: bool = False
                          ) -> tuple[Tensor, Tensor | None]:
    """FlexAttention: a causal block mask, and the additive term as a ``score_mod``.

    The GPU alternative to ``sdpa``'s float mask for a variant with a logits term
    (``qk_scale``): the term is read inside the fused kernel instead of being
    materialised as a (B, 1, T, S) mask with -inf in it, and fully masked tiles are
    skipped. On CUDA it runs compiled (FlexAttention's fused kernel only exists
    compiled); on CPU it runs FlexAttention's unfused reference, forward only, because
    torch 2.13 has no CPU backward for it. Which kernel is faster for ``qk_scale`` on a
    GPU: ``bench/throughput.py --flex qk_scale`` (bench/RESULTS.md).
    """
    if need_weights:
        return explicit_attention(q, k, v, scale=scale, q_offset=q_offset, additive=additive,
                                  need_weights=True)
    from torch.nn.attention.flex_attention import flex_attention

    if not q.is_cuda and torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        raise RuntimeError(f"model.attn_kernel='flex' cannot train on CPU: {FLEX_CPU_LIMIT}")
    B, H, T, _ = q.shape
    S = k.shape[2]
    score_mod = None
    if additive is not None:
        term = additive.to(q.dtype).expand(B, H, T, S)  # a view: broadcast dims get stride 0

        def score_mod(score: Tensor, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
            return score + term[b, h, q_idx, kv_idx]

    # Inside a compiled model Dynamo captures flex_attention itself and Inductor fuses it;
    # in an eager CUDA model the compiled wrapper below does that for this call alone.
    eager_cuda = q.is_cuda and not torch.compiler.is_compiling()
    attend = _compiled_flex_attention() if eager_cuda else flex_attention
    # Contiguous inputs: Inductor's CPU FlexAttention template in torch 2.13 returned wrong
    # values (max error 0.03) for the strided q/k/v views a fused qkv GEMM produces
    # (tests/test_compile.py); a copy each is cheap next to the attention itself.
    block_mask = _causal_block_mask(T, S, q_offset, q.device)
    y = attend(q.contiguous(), k.contiguous(), v.contiguous(), score_mod=score_mod,
               block_mask=block_mask, scale=scale, enable_gqa=H != k.shape[1])
    return y, None


def _causal_block_mask(T: int, S: int, q_offset: int, device: torch.device):
    """The causal ``BlockMask`` of a (T, S) score matrix: traced into a compiled graph (which
    is then reused), and built once per shape in eager mode."""
    if torch.compiler.is_compiling():
        return _build_causal_block_mask(T, S, q_offset, device)
    # A bounded cache: decoding with a KV cache makes a new (T, S, q_offset) per token.
    return _cached_causal_block_mask(T, S, q_offset, device)


def _build_causal_block_mask(T: int, S: int, q_offset: int, device: torch.device):
    from torch.nn.attention.flex_attention import create_block_mask

    def causal(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        return kv_idx <= q_idx + q_offset

    return create_block_mask(causal, None, None, T, S, device=device)


_cached_causal_block_mask = functools.lru_cache(maxsize=64)(_build_causal_block_mask)


@functools.cache
def _compiled_flex_attention():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


AttentionKernel = Callable[..., tuple[Tensor, Tensor | None]]

KERNELS: dict[str, AttentionKernel] = {
    "sdpa": sdpa_attention,
    "flex": flex_attention_kernel,
    "explicit": explicit_attention,
}


def check_kernel(name: str) -> None:
    if name not in KERNELS:
        raise ValueError(f"unknown attention kernel {name!r}; available: {', '.join(sorted(KERNELS))}")


def get_kernel(name: str) -> AttentionKernel:
    check_kernel(name)
    return KERNELS[name]


def build_rope_cache(seq_len: int, n_elem: int, base: int, device: torch.device | None = None
                     ) -> tuple[Tensor, Tensor]:
    """cos and sin tables of shape (seq_len, n_elem) in the rotate-half layout (LLaMA/HF)."""
    theta = 1.0 / (base ** (torch.arange(0, n_elem, 2, device=device).float() / n_elem))
    angles = torch.outer(torch.arange(seq_len, device=device).float(), theta)  # (seq_len, n_elem/2)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate the first ``cos.shape[-1]`` channels of x (B, H, T, hs); the rest pass through.

    x * cos + rotate_half(x) * sin with rotate_half(x) = cat(-x2, x1), computed as the
    two halves swapped by one ``flip`` with the minus sign moved onto sin: the same
    values bit for bit, in fewer kernels, and a backward pass without the zero-filled
    gradient buffers that slicing x into halves costs.
    """
    n_elem = cos.shape[-1]
    if n_elem < x.shape[-1]:  # partial rotary: the remaining channels pass through
        return torch.cat([apply_rope(x[..., :n_elem], cos, sin), x[..., n_elem:]], dim=-1)
    half = n_elem // 2
    signed_sin = torch.cat([-sin[..., :half], sin[..., half:]], dim=-1)  # (T, n_elem), small
    swapped = x.unflatten(-1, (2, half)).flip(-2).flatten(-2)  # cat(x2, x1)
    return (x * cos + swapped * signed_sin).to(x.dtype)


class KVCache:
    """Keys and values of the tokens seen so far, at absolute positions 0..length-1."""

    def __init__(self, batch_size: int, n_query_groups: int, max_len: int, head_size: int,
                 device: torch.device, dtype: torch.dtype) -> None:
        shape = (batch_size, n_query_groups, max_len, head_size)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0

    @property
    def max_len(self) -> int:
        return self.k.shape[2]

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store k, v (B, G, T, hs) after the cached ones; return all keys and values so far."""
        end = self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; cannot append up to {end}")
        self.k[:, :, self.length:end] = k
        self.v[:, :, self.length:end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]

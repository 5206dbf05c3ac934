"""What an attention variant computes (``AttentionSpec``), the kernels that compute it, RoPE
and the KV cache.

A variant (``variants/<name>.py``) owns its projections and *describes* its attention;
``attend`` runs that description on a kernel. For query i (absolute position p_i) and
key j of head h the description means

    s_ij = scale * q_i . k_j                        scaled logits
    s_ij = softcap * tanh(s_ij / softcap)           if ``spec.softcap``
    s_ij += dense[b, h, i, j] + query[b, h, i] + key[b, h, j]      the ``ScoreTerms``
    allowed(i, j) = j <= p_i  and  (j > p_i - window  if ``spec.window``)
    w_ij = softmax_j(s_ij)                          normaliser "softmax"
         = exp(s_ij) / (sum_j exp(s_ij) + exp(sink_h))     "softmax_sink"
         = sigmoid(s_ij + sigmoid_bias)             "sigmoid" (no normalisation)
    y_i = sum_{allowed j} w_ij v_j

Every kernel has one signature (as in transformers' ``ALL_ATTENTION_FUNCTIONS``):

    kernel(q, k, v, spec, terms, *, scale, q_offset, need_weights=False) -> (y, weights | None)

    q: (B, H, T, hs)   k: (B, G, S, hs)   v: (B, G, S, hv) with H % G == 0
    q_offset: absolute position of the first query (keys start at position 0).
    y: (B, H, T, hv)   weights: (B, H, T, S), only from the explicit kernel.

``KERNELS`` says which kernel can express which description and where it trains;
``choose_kernel`` picks the fastest one that can (``model.attn_kernel=auto``), and
``check_kernel`` refuses a forced kernel that cannot, naming the ones that can.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import NamedTuple
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention import sdpa_kernel

from attnlab.cudnn_sdpa import call_backends

NORMALISERS = ("softmax", "softmax_sink", "sigmoid")
FLASH_MAX_HEAD_SIZE = 256  # FlashAttention-2 / SDPA's flash backend
# FlexAttention's CUDA kernel stages q, k and v tiles with the head size rounded up to a power of
# two. torch tunes its tiles for head sizes up to 256; above that (512 or more once rounded) its
# default tiles need more shared memory than an H100 gives a kernel (227 KiB; other GPUs give
# less), and the compile fails ("No valid triton configs ... out of resource: shared memory",
# reported for 512 on an H100).
# Below 16, Inductor refuses to lower it (Triton's tl.dot needs 16).
FLEX_MAX_HEAD_SIZE = 256
FLEX_MIN_HEAD_SIZE = 16


def flex_takes_head_sizes(head_sizes: tuple[int, ...]) -> bool:
    """Whether FlexAttention's CUDA kernel compiles at these q/k and v head sizes (cheap: asked at
    every attention call that chooses its kernel)."""
    return FLEX_MIN_HEAD_SIZE <= min(head_sizes) and max(head_sizes) <= FLEX_MAX_HEAD_SIZE


def flex_head_size_problem(head_sizes: tuple[int, ...]) -> str | None:
    """Why FlexAttention's CUDA kernel cannot take these q/k and v head sizes, or None."""
    if flex_takes_head_sizes(head_sizes):
        return None
    largest, smallest = max(head_sizes), min(head_sizes)
    if smallest < FLEX_MIN_HEAD_SIZE:
        return (f"FlexAttention's CUDA kernel takes head sizes from {FLEX_MIN_HEAD_SIZE} (Inductor does not "
                f"lower a smaller one), not {smallest}")
    rounded = 1 << (largest - 1).bit_length()
    return (f"FlexAttention's CUDA kernel takes head sizes up to {FLEX_MAX_HEAD_SIZE}: head size {largest} "
            f"is staged as {rounded}, whose tiles need more shared memory than an H100 gives a kernel, so "
            f"its compile fails")


@dataclass(frozen=True)
class AttentionSpec:
    """A variant's attention as data: normaliser, logit modifications and mask.

    ``window=w``: w keys, the query's own included (Hugging Face's Mistral and Gemma 2
    ``sliding_window``; attention-gym's ``window_size=w`` is ``window=w + 1``).

    ``dense_terms`` / ``separable_terms`` / the sink declare which ``ScoreTerms`` the
    variant passes at each call, so that a kernel's fitness is known when the block is
    built, not at the first step.
    """

    normaliser: str = "softmax"
    sigmoid_bias: float = 0.0  # "sigmoid" only: b in sigmoid(s + b)
    softcap: float | None = None  # logits -> softcap * tanh(logits / softcap)
    window: int | None = None  # sliding window of w keys (see above); None: all earlier keys
    dense_terms: bool = False  # ScoreTerms.dense
    separable_terms: bool = False  # ScoreTerms.query / ScoreTerms.key

    def __post_init__(self) -> None:
        if self.normaliser not in NORMALISERS:
            raise ValueError(f"unknown attention normaliser {self.normaliser!r}; allowed: "
                             f"{', '.join(NORMALISERS)}")
        if self.softcap is not None and not self.softcap > 0:
            raise ValueError(f"softcap must be positive, got {self.softcap}")
        if self.window is not None and (not isinstance(self.window, int) or self.window < 1):
            raise ValueError(f"window must be a positive integer, got {self.window!r}")

    @property
    def plain_causal(self) -> bool:
        """Nothing but a causal softmax: what the flash kernels do best."""
        return self == PLAIN_CAUSAL


PLAIN_CAUSAL = AttentionSpec()  # built once: ``choose_kernel`` compares with it at every call


class ScoreTerms(NamedTuple):
    """Tensors a variant adds to the logits at one call (all optional, broadcastable).

    dense: (B|1, H|1, T, S), e.g. a learned term per absolute key position.
    query, key: (B|1, H|1, T) and (B|1, H|1, S), added as query[i] + key[j]: a term that
        depends on the query and key positions or features separately (ALiBi's
        -m * (p_i - j) is query = -m * p_i, key = m * j).
    sink: (H,) logits whose exp is the extra mass of a "softmax_sink" denominator.
    """

    dense: Tensor | None = None
    query: Tensor | None = None
    key: Tensor | None = None
    sink: Tensor | None = None


NO_TERMS = ScoreTerms()


class AttentionOutput(NamedTuple):
    """What an attention block returns: the output and, only when asked, the weights."""

    output: Tensor  # (B, T, C)
    weights: Tensor | None  # (B, H, T, S) attention weights (see the variant's docstring), or None


def allowed_mask(T: int, S: int, q_offset: int, window: int | None, device: torch.device) -> Tensor:
    """Boolean (T, S): True where query i (position q_offset + i) may attend key j."""
    q_pos = torch.arange(T, device=device).unsqueeze(1) + q_offset
    k_pos = torch.arange(S, device=device).unsqueeze(0)
    allowed = k_pos <= q_pos
    if window is not None:
        allowed &= k_pos > q_pos - window
    return allowed


def causal_mask(T: int, S: int, q_offset: int, device: torch.device) -> Tensor:
    """Boolean (T, S) causal mask, True where key j <= q_offset + i."""
    return allowed_mask(T, S, q_offset, None, device)


def _additive_terms(terms: ScoreTerms) -> Tensor | None:
    """dense + query[..., None] + key[..., None, :], broadcast, or None when there are none."""
    total = terms.dense
    if terms.query is not None:
        total = terms.query.unsqueeze(-1) if total is None else total + terms.query.unsqueeze(-1)
    if terms.key is not None:
        total = terms.key.unsqueeze(-2) if total is None else total + terms.key.unsqueeze(-2)
    return total


def explicit_attention(q: Tensor, k: Tensor, v: Tensor, spec: AttentionSpec = AttentionSpec(),
                       terms: ScoreTerms = NO_TERMS, *, scale: float, q_offset: int,
                       need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
    """The description computed as written: the reference for tests and analysis weights."""
    H, G = q.shape[1], k.shape[1]
    if H != G:
        k = k.repeat_interleave(H // G, dim=1)
        v = v.repeat_interleave(H // G, dim=1)
    # Logits and normaliser in at least fp32, so that bf16 runs and analysis give comparable weights.
    exact = torch.promote_types(q.dtype, torch.float32)
    scores = (q @ k.transpose(-2, -1)).to(exact) * scale  # (B, H, T, S)
    if spec.softcap is not None:
        scores = spec.softcap * torch.tanh(scores / spec.softcap)
    additive = _additive_terms(terms)
    if additive is not None:
        scores = scores + additive.to(exact)
    T, S = scores.shape[-2:]
    allowed = allowed_mask(T, S, q_offset, spec.window, q.device)
    if spec.normaliser == "sigmoid":
        weights = torch.sigmoid(scores + spec.sigmoid_bias).masked_fill(~allowed, 0.0)
    elif spec.normaliser == "softmax_sink":
        scores = scores.masked_fill(~allowed, float("-inf"))
        sink = terms.sink.to(exact).view(1, H, 1, 1).expand(*scores.shape[:-1], 1)
        weights = torch.softmax(torch.cat([scores, sink], dim=-1), dim=-1)[..., :S]
    else:
        weights = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
    y = weights.to(v.dtype) @ v
    return y, (weights if need_weights else None)


def sdpa_attention(q: Tensor, k: Tensor, v: Tensor, spec: AttentionSpec = AttentionSpec(),
                   terms: ScoreTerms = NO_TERMS, *, scale: float, q_offset: int,
                   need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
    """Fused ``scaled_dot_product_attention``: softmax (with a sink), masks and additive terms."""
    if need_weights:
        return explicit_attention(q, k, v, spec, terms, scale=scale, q_offset=q_offset,
                                  need_weights=True)
    T, S = q.shape[-2], k.shape[-2]
    additive = _additive_terms(terms)
    plain = additive is None and spec.window is None and spec.normaliser == "softmax"
    unmasked = plain and ((q_offset == 0 and T == S) or T == 1)  # causal by is_causal, or one query
    gqa = q.shape[1] != k.shape[1]
    if gqa and not sdpa_takes_gqa(q.device.type, _sdpa_dtype(q), (q.shape[-1], k.shape[-1], v.shape[-1]),
                                  unmasked):
        # Give every query head its own k and v rather than fall back to SDPA's math backend,
        # which keeps (B, H, T, S) maps.
        k, v = (x.repeat_interleave(q.shape[1] // x.shape[1], dim=1) for x in (k, v))
        gqa = False
    if plain and q_offset == 0 and T == S:
        return _fused_sdpa(q, k, v, None, is_causal=True, scale=scale, enable_gqa=gqa), None
    if plain and T == 1:  # one new token attends the whole cache
        return _fused_sdpa(q, k, v, None, scale=scale, enable_gqa=gqa), None
    allowed = allowed_mask(T, S, q_offset, spec.window, q.device)
    if additive is None and spec.normaliser == "softmax":
        mask = allowed  # boolean: True where attending
    else:
        # A float mask carries both the -inf of the mask and the variant's trainable terms,
        # so gradients reach the terms while the kernel stays fused. One masked_fill builds it.
        base = additive.to(q.dtype) if additive is not None else q.new_zeros(())
        mask = base.masked_fill(~allowed, float("-inf"))
    if spec.normaliser == "softmax_sink":
        # The sink is one more key whose logit is sink_h and whose value is 0: it adds
        # exp(sink_h) to the denominator and nothing to the output.
        B, H = q.shape[:2]
        sink = terms.sink.to(q.dtype).view(1, H, 1, 1).expand(B, H, T, 1)
        mask = torch.cat([mask.expand(B, H, T, S), sink], dim=-1)  # (B, H, T, S + 1)
        k = torch.cat([k, k.new_zeros(*k.shape[:2], 1, k.shape[-1])], dim=2)
        v = torch.cat([v, v.new_zeros(*v.shape[:2], 1, v.shape[-1])], dim=2)
    return _fused_sdpa(q, k, v, mask, scale=scale, enable_gqa=gqa), None


def _fused_sdpa(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, *, scale: float, enable_gqa: bool,
                is_causal: bool = False) -> Tensor:
    """One SDPA call, kept off cuDNN's kernel where attnlab.cudnn_sdpa says so (on CUDA: any call
    but a full causal one, head sizes over 128); elsewhere torch chooses."""
    backends = call_backends(q.device.type, mask is None and is_causal, (q.shape[-1], v.shape[-1]))
    with sdpa_kernel(backends) if backends is not None else contextlib.nullcontext():
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, scale=scale,
                                              enable_gqa=enable_gqa)


def _sdpa_dtype(q: Tensor) -> torch.dtype:
    """The dtype SDPA computes in: autocast's where it is on (it casts SDPA's inputs), else q's."""
    device = q.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else q.dtype


def sdpa_takes_gqa(device_type: str, dtype: torch.dtype, head_sizes: tuple[int, int, int], unmasked: bool) -> bool:
    """Whether an SDPA call can take fewer key/value heads than query heads (``enable_gqa``)
    and stay fused. On CPU its flash kernel takes them with or without a mask. On CUDA only the
    flash kernel does (CUDA's memory-efficient kernel refuses them): no mask, half precision,
    one head size for q, k and v, at most ``FLASH_MAX_HEAD_SIZE``."""
    if device_type != "cuda":
        return True
    q_size, k_size, v_size = head_sizes
    return (unmasked and dtype in (torch.float16, torch.bfloat16)
            and q_size == k_size == v_size <= FLASH_MAX_HEAD_SIZE)


# Eager CUDA inference below this many scores (B*H*T*S) takes the explicit kernel rather than
# compiling FlexAttention for its shape: 2^26 fp32 scores are 256 MiB a map, and the explicit kernel
# holds two or three maps at once (scores, weights, a sink's extra column), so at most ~1 GiB.
EAGER_FLEX_MIN_SCORES = 2**26

# Why ``flex`` only trains on CUDA; every refusal (kernel, train(), bench) gives this reason.
FLEX_CPU_LIMIT = (f"FlexAttention has no CPU backward in torch {torch.__version__}; use "
                  f"model.attn_kernel=auto (the default: the fastest kernel that can train the variant "
                  f"here), or train on a CUDA GPU")


# Below 128 queries Inductor's CUDA lowering takes its flex-decoding kernel, whose tile is T times
# the query heads per key head rounded up to a power of two; torch 2.11 keeps only tiles dividing
# 128, so e.g. T=100 with 2 query heads per key head finds no kernel (NoValidChoicesError). The
# main FlexAttention kernel takes every T.
FLEX_DECODING_BELOW = 128
FORCE_FLEX_KERNEL = {"FORCE_USE_FLEX_ATTENTION": True}


def flex_attention_kernel(q: Tensor, k: Tensor, v: Tensor, spec: AttentionSpec = AttentionSpec(),
                          terms: ScoreTerms = NO_TERMS, *, scale: float, q_offset: int,
                          need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
    """FlexAttention: the mask as a ``BlockMask`` (fully masked tiles are skipped), softcap and
    terms as a ``score_mod`` read inside the fused kernel, the sink through the log-sum-exp.

    On CUDA it runs compiled (FlexAttention's fused kernel only exists compiled); on CPU it
    runs FlexAttention's unfused reference, forward only, because torch 2.13 has no CPU
    backward for it. Queries after a KV cache (``q_offset > 0``), and eager CUDA inference on
    fewer than ``EAGER_FLEX_MIN_SCORES`` scores, take the explicit kernel.
    """
    if need_weights:
        return explicit_attention(q, k, v, spec, terms, scale=scale, q_offset=q_offset,
                                  need_weights=True)
    B, H, T, _ = q.shape
    S = k.shape[2]
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    # Inside a compiled model Dynamo captures flex_attention itself and Inductor fuses it;
    # in an eager CUDA model the compiled wrapper below does that for this call alone.
    eager_cuda = q.is_cuda and not torch.compiler.is_compiling()
    if q_offset > 0 or (eager_cuda and not needs_grad and B * H * T * S < EAGER_FLEX_MIN_SCORES):
        # Decoding after a KV cache (a key set that grows each token), or eager inference on a
        # small score matrix (a prompt's prefill, a probe, validation when trainer.compile=false):
        # FlexAttention's compiled kernel is static in its shapes, so each would be one more
        # compile (seconds; past Dynamo's recompile limit it runs unfused anyway). The explicit
        # kernel gives the same numbers, cheaply at these sizes.
        return explicit_attention(q, k, v, spec, terms, scale=scale, q_offset=q_offset)
    from torch.nn.attention.flex_attention import AuxRequest, flex_attention

    if not q.is_cuda and needs_grad:
        raise RuntimeError(f"model.attn_kernel='flex' cannot train on CPU: {FLEX_CPU_LIMIT}")
    # Views with stride 0 on broadcast dims, so the score_mod can index every (b, h). The terms
    # keep their dtype: position terms such as ALiBi's are large and cancel, which bf16 cannot.
    dense = None if terms.dense is None else terms.dense.expand(B, H, T, S)
    query = None if terms.query is None else terms.query.expand(B, H, T)
    key = None if terms.key is None else terms.key.expand(B, H, S)
    cap = spec.softcap
    score_mod = None
    if cap is not None or dense is not None or query is not None or key is not None:
        def score_mod(score: Tensor, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
            if cap is not None:
                score = cap * torch.tanh(score / cap)
            if dense is not None:
                score = score + dense[b, h, q_idx, kv_idx]
            if query is not None:
                score = score + query[b, h, q_idx]
            if key is not None:
                score = score + key[b, h, kv_idx]
            return score

    run = _compiled_flex_attention() if eager_cuda else flex_attention
    block_mask = _block_mask(T, spec.window, q.device)
    sink = spec.normaliser == "softmax_sink"
    # Contiguous inputs: Inductor's CPU FlexAttention template in torch 2.13 returned wrong
    # values (max error 0.03) for the strided q/k/v views a fused qkv GEMM produces
    # (tests/test_compile.py); a copy each is cheap next to the attention itself.
    out = run(q.contiguous(), k.contiguous(), v.contiguous(), score_mod=score_mod,
              block_mask=block_mask, scale=scale, enable_gqa=H != k.shape[1],
              return_aux=AuxRequest(lse=True) if sink else None,
              kernel_options=FORCE_FLEX_KERNEL if q.is_cuda and T < FLEX_DECODING_BELOW else None)
    if not sink:
        return out, None
    y, aux = out
    # softmax over keys and sink = softmax over keys * Z / (Z + exp(sink)), Z = exp(lse).
    exact = torch.promote_types(y.dtype, torch.float32)
    keep = torch.sigmoid(aux.lse.to(exact) - terms.sink.to(exact).view(1, H, 1))  # (B, H, T)
    return y * keep.unsqueeze(-1).to(y.dtype), None


def _block_mask(T: int, window: int | None, device: torch.device):
    """The causal ``BlockMask`` of a (T, T) score matrix: traced into a compiled graph (which is
    then reused), and built once per length in eager mode."""
    if torch.compiler.is_compiling():
        return _build_block_mask(T, window, device)
    return _cached_block_mask(T, window, device)


def _build_block_mask(T: int, window: int | None, device: torch.device):
    from torch.nn.attention.flex_attention import create_block_mask

    def causal(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        return kv_idx <= q_idx

    def sliding(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        return (kv_idx <= q_idx) & (kv_idx > q_idx - window)

    return create_block_mask(causal if window is None else sliding, None, None, T, T, device=device)


_cached_block_mask = functools.lru_cache(maxsize=16)(_build_block_mask)  # train, validation, prompts


@functools.cache
def _compiled_flex_attention():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


AttentionKernel = Callable[..., tuple[Tensor, Tensor | None]]


@dataclass(frozen=True)
class Kernel:
    """A kernel and what it cannot express (``limit(spec)``: the reason, or None)."""

    run: AttentionKernel
    limit: Callable[[AttentionSpec], str | None]


def _softmax_only(name: str) -> Callable[[AttentionSpec], str | None]:
    def limit(spec: AttentionSpec) -> str | None:
        if spec.normaliser == "sigmoid":
            return f"{name} always normalises with a softmax (the variant's normaliser is sigmoid)"
        return None
    return limit


def _sdpa_limit(spec: AttentionSpec) -> str | None:
    if spec.softcap is not None:
        return "SDPA cannot apply tanh soft-capping to the logits inside the kernel"
    return _softmax_only("SDPA")(spec)


KERNELS: dict[str, Kernel] = {
    "sdpa": Kernel(sdpa_attention, _sdpa_limit),
    "flex": Kernel(flex_attention_kernel, _softmax_only("FlexAttention")),
    "explicit": Kernel(explicit_attention, lambda spec: None),
}


def kernels_for(spec: AttentionSpec) -> list[str]:
    """The kernels that can express ``spec`` (``auto`` can always run it)."""
    return [name for name, kernel in KERNELS.items() if kernel.limit(spec) is None]


def check_kernel(name: str, spec: AttentionSpec, variant: str) -> None:
    """Refuse, when the block is built, a forced kernel that cannot express the variant."""
    if name == "auto":
        return
    if name not in KERNELS:
        raise ValueError(f"unknown attention kernel {name!r}; available: auto, {', '.join(sorted(KERNELS))}")
    reason = KERNELS[name].limit(spec)
    if reason is not None:
        raise ValueError(f"model.attn_kernel={name!r} cannot run variant {variant!r}: {reason}; "
                         f"kernels that can: auto, {', '.join(kernels_for(spec))}")


def choose_kernel(spec: AttentionSpec, device_type: str, head_sizes: tuple[int, ...]) -> str:
    """``auto``: the fastest kernel that can express ``spec`` on this device.

    CUDA: SDPA's flash kernel for a plain causal softmax; FlexAttention for anything with
    logit terms, a window, a cap or a sink (it reads them inside the fused kernel and skips
    masked tiles, where SDPA would need a materialised float mask), unless a head size (q/k
    or v) is outside ``FLEX_MIN_HEAD_SIZE``..``FLEX_MAX_HEAD_SIZE``. CPU: SDPA, else the
    explicit kernel (FlexAttention has no CPU backward and runs unfused there).
    """
    if device_type == "cuda":
        order = ("sdpa", "flex", "explicit") if spec.plain_causal else ("flex", "sdpa", "explicit")
        if not flex_takes_head_sizes(head_sizes):
            order = tuple(name for name in order if name != "flex")
    else:
        order = ("sdpa", "explicit")
    return next(name for name in order if KERNELS[name].limit(spec) is None)


def attend(q: Tensor, k: Tensor, v: Tensor, spec: AttentionSpec, terms: ScoreTerms = NO_TERMS, *,
           kernel: str, scale: float, q_offset: int, need_weights: bool = False
           ) -> tuple[Tensor, Tensor | None]:
    """Run the description on ``kernel`` (a name from ``KERNELS``, or ``auto``)."""
    name = choose_kernel(spec, q.device.type, (q.shape[-1], v.shape[-1])) if kernel == "auto" else kernel
    return KERNELS[name].run(q, k, v, spec, terms, scale=scale, q_offset=q_offset,
                             need_weights=need_weights)


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
    gradient buffers that slicing x into halves costs. No channel rotated: x unchanged.
    """
    n_elem = cos.shape[-1]
    if n_elem == 0:
        return x
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
        self.extra: dict[str, Tensor] = {}  # per-position values a variant keeps, (B, X, max_len)
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

    def extend(self, name: str, values: Tensor) -> Tensor:
        """Store per-position ``values`` (B, X, T) for the positions just appended (call after
        ``append``); return the values of every position so far, (B, X, length)."""
        start = self.length - values.shape[-1]
        if name not in self.extra:
            self.extra[name] = values.new_zeros(*values.shape[:-1], self.max_len)
        self.extra[name][..., start:self.length] = values
        return self.extra[name][..., :self.length]

"""What a training run will do on a device, before it runs: ``python -m attnlab.plan --preset seed100m
--seq-len 512 --batch-size 8 --device h100``.

Per variant: the kernel every attention call uses (``model.attn_kernel=auto`` resolved as the
model resolves it, ``attnlab.variants.training_kernel``) and, on SDPA, which of its backends runs
and why; the tensors a layer materialises beyond the flash path, with their bytes; and an
estimate of peak training memory (``estimate_peak_bytes``). ``check_fits_device`` refuses a run
whose estimate exceeds the device's memory, naming settings that fit.

The estimate, in bytes, with P parameters, N = B * T tokens per micro-batch, L layers, h = n_embd,
f = SwiGLU width, H query heads, G key/value groups, hs = head_size, V = padded vocabulary and
a = 2 (bf16-mixed) or 4 (32-true) bytes per matmul activation:

    static = 16 P            fp32 weights 4P (Lightning keeps them fp32 under bf16-mixed: they
                             are the master weights), fp32 gradients 4P, AdamW's two fp32 moments 8P
           + 2 P             bf16-mixed only: autocast's bf16 copy of each weight in the forward
    (bf16-true: 8 P, weights, gradients and AdamW's moments all in bf16)
    layer  = N * (16 h + 2 a h + a hs (4 H + 3 G) + 4 a f + own)  + extra tensors (kernel_plan)
    head   = N * ((8 + a) h + (8 + a) V)
    peak   = static + L * layer + head + transient
    with trainer.activation_checkpointing: static + L * 4 N h + layer + head + transient
             (each block keeps only its fp32 input; one block's activations live again while
             its backward recomputes them)

``layer`` is Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer
Models", sbh(34 + 5as/h) for GPT) redone for this block: no dropout, pre-norm RMSNorm computed
in fp32 (each norm keeps its fp32 input and normalised output, 8h, plus the a-byte copy its
Linear saves, a h), the qkv output (H + 2G) hs (v is a view of it) plus the roped q and k (H +
G) hs, the attention output and its contiguous copy for the projection 2 H hs (flash keeps no
(T, S) map; its log-sum-exp is negligible), and SwiGLU's four f-wide tensors (fc_1 and fc_2
outputs, the silu output and the product). ``head``: the final norm, the logits in a bytes,
their fp32 copy and log-softmax (8 V). ``transient``: 3 fp32 (B, H, T, S) maps where a kernel
materialises such maps (the gradients alive in one layer's attention backward), else 0; plus,
on SDPA, the gradient of a float mask that carries trainable terms or a sink (the mask itself is
kept per layer only by the kernels whose backward reads it: memory-efficient and CPU flash; the
math backend keeps the probabilities instead); on FlexAttention, a trainable dense term that
broadcasts over heads or batch has its gradient accumulated at the full (B, H, T, S) in fp32 and
cast to the term's dtype before it is summed back to the term's shape.
Gradients are counted whole while all activations are alive, so the estimate is an upper bound
of the step's peak less allocator fragmentation; tests/test_plan.py compares it with a measured
step. ``own``: a variant's own per-token activations outside the attention kernel's calls
(qk_norm's norms, gated_attn's gate, gelu_bias' GELUs, diff_attn's sub-norm and the paired values
it hands the kernel), read off autograd by ``own_activation_bytes_per_token``. A fused kernel keeps
the q, k and v it is handed; SDPA's math backend keeps scaled copies of q and k instead (its
entries in the plan), so there the layer's q and k, and a variant's handed copies, are counted
beside those copies: an overestimate.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import inspect
import math
import os
import sys
import unittest.mock
from dataclasses import dataclass
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from attnlab import attention
from attnlab.attention import (FLASH_MAX_HEAD_SIZE, FLEX_MAX_HEAD_SIZE, FLEX_MIN_HEAD_SIZE, KERNELS,
                               build_rope_cache, flex_head_size_problem, flex_takes_head_sizes, kernels_for,
                               sdpa_takes_gqa)
from attnlab.config import PRESETS, ModelConfig
from attnlab.cudnn_sdpa import (CUDNN_MAX_HEAD_SIZE, cudnn_takes, device_capability, device_key, keeps_cudnn_out,
                                prefers_cudnn)
from attnlab.params import total_parameters, variant_at_preset
from attnlab.variants import training_kernel
from variants import available_variants, get_variant, resolve
from variants.registry import supported_kernels

GiB = 2 ** 30
# Marketed memory per GPU (NVIDIA datasheets: H100 SXM/PCIe 80 GB, H200 141 GB, A100 40/80 GB,
# L4 24 GB, RTX 4090 24 GB, A10 24 GB, V100 16/32 GB, T4 16 GB). HBM "GB" is close to GiB
# (an H100 80GB reports 81,559 MiB); a CUDA run uses total_memory as measured instead.
DEVICE_MEMORY: dict[str, int] = {
    "h100": 80 * GiB, "h200": 141 * GiB, "a100": 80 * GiB, "a100-40": 40 * GiB, "a100-80": 80 * GiB,
    "l4": 24 * GiB, "rtx4090": 24 * GiB, "a10": 24 * GiB, "v100": 32 * GiB, "v100-16": 16 * GiB,
    "t4": 16 * GiB, "b200": 180 * GiB,
}
TRANSIENT_MAPS = 3  # see KernelPlan.transient_bytes


def device_memory(name: str) -> int:
    """Bytes of memory of a device named in ``DEVICE_MEMORY``, or ``cpu``: the machine's RAM."""
    key = device_key(name)
    if key == "cpu":
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if key not in DEVICE_MEMORY:
        raise ValueError(f"unknown device {name!r}; known: cpu, {', '.join(sorted(DEVICE_MEMORY))}")
    return DEVICE_MEMORY[key]


HALF_TRUE = ("bf16-true", "16-true")  # weights and optimizer state in half precision too


def activation_bytes(precision: str) -> int:
    if precision not in ("bf16-mixed", "16-mixed", *HALF_TRUE, "32-true", "32"):
        raise ValueError(f"precision must be bf16-mixed, 16-mixed, bf16-true, 16-true or 32-true, got {precision!r}")
    return 2 if precision.endswith("mixed") or precision in HALF_TRUE else 4


@dataclass(frozen=True)
class Tensor_:
    """One tensor a layer keeps (or builds) beyond the flash path."""

    what: str
    shape: tuple[int, ...]
    bytes_per_element: float  # an average where read off autograd for several tensors at once
    per_position: bool = False  # (B, H, T or S, hs) vectors, not a map over (query, key) pairs

    @property
    def nbytes(self) -> int:
        return round(math.prod(self.shape) * self.bytes_per_element)

    @property
    def score_map(self) -> bool:
        """A (B, H, T, S) map or a broadcast of one: what grows with T * S."""
        return len(self.shape) == 4 and not self.per_position


@dataclass(frozen=True)
class KernelPlan:
    kernel: str  # sdpa, flex or explicit
    backend: str  # cudnn, flash, memory-efficient, math, cpu-flash, fused (flex), explicit
    why: str
    extra: tuple[Tensor_, ...]  # per layer
    backward: tuple[Tensor_, ...] = ()  # alive only in one layer's backward

    @property
    def extra_bytes(self) -> int:
        return sum(t.nbytes for t in self.extra)

    @property
    def transient_bytes(self) -> int:
        """Once per step: the backward of one layer's materialised (B, H, T, S) maps holds the
        gradients of the maps and of their inputs at once (TRANSIENT_MAPS fp32 maps), and the
        kernel's own ``backward`` tensors."""
        maps = [t for t in self.extra if t.score_map]
        return (TRANSIENT_MAPS * 4 * max((math.prod(t.shape) for t in maps), default=0)
                + sum(t.nbytes for t in self.backward))


PROBE_TOKENS = 16  # own_activation_bytes_per_token's block forwards: this many tokens, and twice it
_slopes: dict[tuple[str, int], float] = {}  # (resolved config, a) -> _saved_per_token's result
_slopes_attend: dict[tuple[str, int, str], tuple[float, float]] = {}  # _own_attention_saved_bytes' results


def own_activation_bytes_per_token(config: ModelConfig, precision: str) -> float:
    """Bytes per token that one layer of ``config``'s variant keeps for its backward beyond what
    the baseline's attention block keeps (``layer`` in the module docstring): its norms, gates,
    activation functions and the copies of q, k and v it hands the kernel, outside the kernel's
    calls and its ``ScoreTerms`` (``kernel_plan`` counts those). Read off the tensors autograd
    saves in forwards of the block on the CPU at the configuration's widths, at ``PROBE_TOKENS``
    tokens and twice as many (under bf16 autocast where ``precision`` computes in half
    precision), less the baseline block's; never below 0."""
    _, resolved = resolve(config)
    a = activation_bytes(precision)
    baseline = dataclasses.replace(resolved, variant="baseline", variant_options={})
    return max(0.0, _saved_per_token(resolved, a) - _saved_per_token(baseline, a))


def _saved_per_token(resolved: ModelConfig, a: int) -> float:
    """``_saved_outside_attention``'s bytes per token, the slope between two lengths (what does not
    grow with the tokens, autocast's bf16 copy of a weight, counted with the weights, drops out);
    cached, so that the baseline block is probed once for all the variants of a plan."""
    key = (repr(resolved), a)
    if key not in _slopes:
        _slopes[key] = (_saved_outside_attention(resolved, a, 2 * PROBE_TOKENS)
                        - _saved_outside_attention(resolved, a, PROBE_TOKENS)) / PROBE_TOKENS
    return _slopes[key]


def _saved_outside_attention(config: ModelConfig, a: int, tokens: int) -> int:
    """Bytes of the new tensors autograd saves in one forward of ``config``'s attention block on
    the CPU, one sequence of ``tokens`` tokens, outside its attention kernel's calls and
    ``score_terms`` (``_saved_in_block_forward``)."""
    block_type, resolved = resolve(config)
    # Its own random numbers (the block's initialisation, its input), so that a plan made before a
    # run's model is built leaves the run's draws as they were; and gradients on, so that autograd saves.
    with torch.random.fork_rng(devices=[]), torch.enable_grad():
        return _saved_in_block_forward(block_type(resolved), resolved, a, tokens)


def _saved_in_block_forward(block: nn.Module, resolved: ModelConfig, a: int, tokens: int) -> int:
    """What the kernel plan leaves out: counting pauses inside the attention kernel's calls
    (``attnlab.attention.attend``) and ``score_terms``, whose tensors the plan counts. A block
    whose ``attend`` calls the kernel (the baseline's, diff_attn's two maps) has what it keeps
    around those calls counted, and the q, k and v it hands the kernel, which a fused kernel keeps
    for its backward (the baseline's are the layer's own, so only a variant's copies, such as
    diff_attn's paired and repeated values, count). One whose ``attend`` computes its attention
    itself (talking_heads: its maps are the plan's) is paused in the whole of it."""
    block.layer_idx = 0
    counting = True
    # storage -> a tensor handed to the kernel, held so that its address is not reused meanwhile
    handed: dict[int, torch.Tensor] = {}
    kernel_calls = 0
    kernel_signature = inspect.signature(attention.attend)

    def paused(method, kernel: bool = False):
        def call(*args, **kwargs):
            nonlocal counting, kernel_calls
            if kernel:
                kernel_calls += 1
                if counting:
                    given = kernel_signature.bind(*args, **kwargs).arguments
                    handed.update({given[name].untyped_storage().data_ptr(): given[name] for name in "qkv"})
            outer, counting = counting, False
            try:
                return method(*args, **kwargs)
            finally:
                counting = outer
        return call

    x = torch.randn(1, tokens, resolved.n_embd, requires_grad=True)
    cos, sin = build_rope_cache(tokens, resolved.rope_n_elem, resolved.rope_base)
    inputs = (x, cos, sin, *block.parameters(), *block.buffers())
    known = {t.untyped_storage().data_ptr() for t in inputs}
    # ``attend`` reaches the kernel through its module's global name (``from attnlab.attention
    # import attend``): patched there for this forward only.
    module = sys.modules[type(block).attend.__module__]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a == 2), contextlib.ExitStack() as stack:
        if getattr(module, "attend", None) is attention.attend:
            stack.enter_context(unittest.mock.patch.object(module, "attend", paused(attention.attend, kernel=True)))
        stack.enter_context(unittest.mock.patch.object(block, "score_terms", paused(block.score_terms)))
        saved = saved_storages(lambda: block(x, cos, sin), inputs, counting=lambda: counting)
        if kernel_calls:
            return sum({**saved, **{ptr: t.untyped_storage().nbytes() for ptr, t in handed.items()
                                    if ptr not in known}}.values())
        stack.enter_context(unittest.mock.patch.object(block, "attend", paused(block.attend)))
        return new_saved_bytes(lambda: block(x, cos, sin), inputs, counting=lambda: counting)


def _own_attention_saved_bytes(block_type: type, resolved: ModelConfig, a: int) -> tuple[float, float]:
    """For a block that computes its attention itself (it declares ``kernels``): the bytes its
    ``attend`` has autograd save beyond q, k, v and its terms, per (query, key) pair and per
    position of one sequence, (beta, alpha) of saved(t) = beta t^2 + alpha t, solved from forwards
    on the CPU at ``PROBE_TOKENS`` tokens and twice as many (under bf16 autocast where ``a`` is 2).
    Cached per configuration."""
    key = (repr(resolved), a, "attend")
    if key not in _slopes_attend:
        t = PROBE_TOKENS
        s1, s2 = (_saved_in_attend(block_type, resolved, a, n) for n in (t, 2 * t))
        beta = (s2 - 2 * s1) / (2 * t * t)
        _slopes_attend[key] = (max(0.0, beta), max(0.0, (s1 - beta * t * t) / t))
    return _slopes_attend[key]


def _saved_in_attend(block_type: type, resolved: ModelConfig, a: int, tokens: int) -> int:
    H, G = resolved.n_head, resolved.n_query_groups
    hs, vs = block_type.attention_head_sizes(resolved)
    dtype = torch.bfloat16 if a == 2 else torch.float32
    with torch.random.fork_rng(devices=[]), torch.enable_grad():
        block = block_type(resolved)
        block.layer_idx = 0
        x = torch.randn(1, tokens, resolved.n_embd)
        q = torch.randn(1, H, tokens, hs, dtype=dtype, requires_grad=True)
        k = torch.randn(1, G, tokens, hs, dtype=dtype, requires_grad=True)
        v = torch.randn(1, G, tokens, vs, dtype=dtype, requires_grad=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a == 2):
            terms = block.score_terms(x, 0, tokens, None)
            given = (q, k, v, x, *(t for t in terms if t is not None), *block.parameters(), *block.buffers())
            return new_saved_bytes(lambda: block.attend(q, k, v, terms, 0, False), given)


def new_saved_bytes(call: Callable[[], Any], inputs: Iterable[torch.Tensor],
                    counting: Callable[[], bool] = lambda: True) -> int:
    """Bytes of the tensors autograd saves for the backward during ``call()``, each storage once,
    other than ``inputs``' (and only while ``counting()``)."""
    return sum(saved_storages(call, inputs, counting).values())


def saved_storages(call: Callable[[], Any], inputs: Iterable[torch.Tensor],
                   counting: Callable[[], bool] = lambda: True) -> dict[int, int]:
    """``new_saved_bytes``' storages: their addresses and bytes."""
    known = {t.untyped_storage().data_ptr() for t in inputs}
    saved: dict[int, int] = {}

    def keep(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if counting() and ptr not in known:
            saved[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        call()
    return saved


def _term_shapes(config: ModelConfig, B: int, T: int, a: int = 4
                 ) -> tuple[dict[str, tuple[int, ...]], bool, dict[str, int]]:
    """Shapes of the ``ScoreTerms`` the block passes at a training call, found by calling its
    ``score_terms`` on the meta device (nothing allocated; under autocast where ``a`` is 2, as
    training calls it), whether any needs a gradient, and each one's bytes per element (a term
    computed from fp32 parameters stays fp32 under autocast)."""
    block, resolved = resolve(config)
    with torch.device("meta"), torch.autocast("cpu", dtype=torch.bfloat16, enabled=a == 2):
        attn = block(resolved)
        attn.layer_idx = 0
        terms = attn.score_terms(torch.empty(B, T, resolved.n_embd), 0, T, None)
    present = {name: t for name, t in terms._asdict().items() if t is not None}
    return ({name: tuple(t.shape) for name, t in present.items()}, any(t.requires_grad for t in present.values()),
            {name: t.element_size() for name, t in present.items()})


def _mask_shape(shapes: dict[str, tuple[int, ...]], B: int, H: int, T: int, S: int) -> tuple[int, ...]:
    """The broadcast shape of SDPA's float mask (attnlab.attention.sdpa_attention)."""
    parts = [(T, S)]
    if "dense" in shapes:
        parts.append(shapes["dense"])
    if "query" in shapes:
        parts.append((*shapes["query"], 1))
    if "key" in shapes:
        parts.append((*shapes["key"][:-1], 1, shapes["key"][-1]))
    shape = tuple(torch.broadcast_shapes(*parts))
    if "sink" in shapes:
        shape = (B, H, T, S + 1)
    return shape


def kernel_plan(config: ModelConfig, seq_len: int, batch_size: int, precision: str, device_type: str,
                kernel: str | None = None, cudnn_first: bool = False,
                capability: tuple[int, int] | None = None) -> KernelPlan:
    """The kernel one attention call of ``config`` trains on, why, and the tensors it materialises.

    ``kernel``: None for the configuration's ``attn_kernel`` (``auto`` resolved by the rule the
    model uses). SDPA's backend on CUDA follows torch's ``sdp_utils``: where ``cudnn_first``
    (``attnlab.cudnn_sdpa.prefers_cudnn`` of the device), cuDNN takes the unmasked bf16/fp16 calls
    at head sizes up to 128 (multiples of 8; attnlab keeps it off the rest); flash needs no mask
    and head_size <= 256 (a multiple of 8, else torch pads); memory-efficient takes a mask but needs
    head_size divisible by 8 in bf16/fp16 (4 in fp32), bf16 only on sm80+; else math, which
    materialises the (B, H, T, S) scores and probabilities. cuDNN, like flash, keeps no (T, S) map.
    ``capability``: the GPU's compute capability (None: sm80 or later), flash's needs sm80+.
    """
    block, resolved = resolve(config)
    spec = block.attention_spec(resolved)
    name = kernel or resolved.attn_kernel
    if name == "auto":
        name = training_kernel(block, resolved, device_type)
    B, T, S = batch_size, seq_len, seq_len
    H, hs = resolved.n_head, resolved.head_size
    a = activation_bytes(precision)
    bhts = (B, H, T, S)
    shapes, terms_grad, term_bytes = _term_shapes(resolved, B, T, a)
    extra: list[Tensor_] = [Tensor_(f"ScoreTerms.{k} (the variant's own)", s, term_bytes[k])
                            for k, s in shapes.items() if k != "sink"]
    if block.kernels is not None:
        # The block computes its attention itself (talking_heads, or a user's own softmax): what
        # autograd saves in its attend, read off CPU forwards, not assumed.
        per_score, per_position = _own_attention_saved_bytes(block, resolved, a)
        if per_score:
            extra.append(Tensor_("its own attention's maps, saved for the backward (read off autograd; "
                                 "bytes per head on average)", bhts, per_score / H))
        if per_position:
            extra.append(Tensor_("its own attention's tensors that grow with the tokens, saved (read off "
                                 "autograd)", (B, T), per_position, per_position=True))
        return KernelPlan(name, "explicit", f"{config.variant} computes its attention itself "
                          f"(kernels={block.kernels})", tuple(extra))
    _, vs = block.attention_head_sizes(resolved)
    flex_problem = flex_head_size_problem((hs, vs)) if device_type == "cuda" else None
    auto = kernel is None and resolved.attn_kernel == "auto"
    # auto passed over FlexAttention for this head size: say so before the other kernel's reason
    skipped = (f"{flex_problem}; " if flex_problem is not None and auto and not spec.plain_causal
               and KERNELS["flex"].limit(spec) is None else "")
    if name == "explicit":
        why = (f"{skipped}SDPA cannot express it" if skipped else "no fused kernel expresses it") if auto \
            else "model.attn_kernel=explicit"
        extra.append(Tensor_("softmax/sigmoid weights (fp32, saved)", bhts, 4))
        if spec.normaliser == "sigmoid":
            extra.append(Tensor_("masked sigmoid weights (saved for weights @ v)", bhts, a))
        elif a != 4:
            extra.append(Tensor_("weights cast for weights @ v", bhts, a))
        if spec.softcap is not None:
            extra.append(Tensor_("tanh-capped logits (fp32)", bhts, 4))
        extra.append(Tensor_("boolean mask", (T, S), 1))
        return KernelPlan(name, "explicit", why, tuple(extra))
    if name == "flex":
        if flex_problem is not None:  # forced: train.py refuses it (check_flex_head_size)
            return KernelPlan(name, "none (refused)", flex_problem, tuple(extra))
        dense = shapes.get("dense")
        broadcast = dense is not None and terms_grad and math.prod(dense) < B * H * T * S
        # The term is captured expanded to every (b, h) (attnlab.attention.flex_attention_kernel).
        backward = (Tensor_("gradient of the expanded dense term (fp32, then cast)", bhts, 4 + a),) if broadcast else ()
        return KernelPlan(name, "fused (flex)", "FlexAttention reads the terms, cap and sink in a score_mod "
                          "and skips masked tiles: no (T, S) tensor", tuple(extra), backward)
    # SDPA
    float_mask = bool(shapes) or spec.normaliser == "softmax_sink"
    bool_mask = not float_mask and spec.window is not None
    # The mask is kept per layer only by the kernels whose backward reads it (memory-efficient and
    # CPU flash); the math backend adds it to the scores and keeps the probabilities instead. Its
    # gradient lives in one layer's backward at a time.
    mask: list[Tensor_] = []
    mask_grad: tuple[Tensor_, ...] = ()
    if float_mask:
        mshape = _mask_shape(shapes, B, H, T, S)
        mask.append(Tensor_("float mask (-inf and the terms)", mshape, a))
        if terms_grad or "sink" in shapes:
            mask_grad = (Tensor_("gradient of the float mask", mshape, a),)
    elif bool_mask:
        mask.append(Tensor_("boolean window mask", (T, S), 1))
    G = resolved.n_query_groups
    keys = S + 1 if "sink" in shapes else S  # the sink attends as one more key (a zero value)
    math_maps = _math_backend_tensors(B, H, G, T, keys, hs, vs, a, new_v="sink" in shapes)
    # Where SDPA cannot take GQA fused, k and v reach it repeated to H heads
    # (attnlab.attention.sdpa_attention), and with a sink's zero key: new tensors the kernel saves.
    half = torch.bfloat16 if a == 2 else torch.float32
    repeated = G != H and not sdpa_takes_gqa(device_type, half, (hs, hs, vs), not (float_mask or bool_mask))
    how = ", ".join([f"repeated to {H} heads"] * repeated + ["with the sink's zero key"] * ("sink" in shapes))
    new_kv = [Tensor_(f"{x}, {how} (saved)", (B, H, keys, size), a, per_position=True)
              for x, size in (("k", hs), ("v", vs)) if how]
    if device_type != "cuda":
        if float_mask and (terms_grad or "sink" in shapes):
            return KernelPlan(name, "math", "CPU: the float mask needs a gradient, which only SDPA's math "
                              "backend gives", tuple(extra + math_maps), mask_grad)
        if vs != hs:
            return KernelPlan(name, "math", f"CPU: SDPA's flash kernel takes one head size for q, k and v "
                              f"({config.variant}'s values are {vs}, keys {hs})", tuple(extra + math_maps), mask_grad)
        return KernelPlan(name, "cpu-flash", "CPU: SDPA's flash kernel for CPU (any head size)",
                          tuple(extra + mask + new_kv))
    alignment = 8 if a == 2 else 4
    before_sm80 = capability is not None and tuple(capability) < (8, 0)
    bf16_refused = before_sm80 and precision.startswith("bf16")  # by memory-efficient: no bf16 before sm80
    flash_ok = hs <= FLASH_MAX_HEAD_SIZE and vs == hs and a == 2 and not before_sm80
    aligned = hs % alignment == 0 and vs % alignment == 0
    meff_ok = aligned and not bf16_refused
    masked = float_mask or bool_mask
    if cudnn_first and a == 2 and cudnn_takes((hs, vs)):
        if not keeps_cudnn_out(not masked, (hs, vs)):
            return KernelPlan(name, "cudnn", f"plain causal softmax, head sizes {hs}/{vs} <= {CUDNN_MAX_HEAD_SIZE}: "
                              "torch tries cuDNN first on this GPU", tuple(extra + new_kv))
        skipped += ("attnlab keeps cuDNN (first on this GPU) off masked calls; " if masked else
                    f"attnlab keeps cuDNN (first on this GPU) off head sizes over {CUDNN_MAX_HEAD_SIZE}; ")
    if not masked and flash_ok:
        return KernelPlan(name, "flash", f"{skipped}plain causal softmax, head_size={hs} <= {FLASH_MAX_HEAD_SIZE}",
                          tuple(extra + new_kv))
    if before_sm80:
        reason = f"flash needs compute capability 8.0 or later (this GPU's: {capability[0]}.{capability[1]})"
    elif hs > FLASH_MAX_HEAD_SIZE:
        reason = f"head_size={hs} is not flash-able (flash takes head_size <= {FLASH_MAX_HEAD_SIZE}, a multiple of 8)"
    elif vs != hs:
        reason = f"flash takes one head size for q, k and v ({config.variant}'s values are {vs}, keys {hs})"
    elif a != 2:
        reason = f"flash takes fp16/bf16, not {precision}"
    else:
        reason = "flash takes no attention mask"
    if meff_ok:
        return KernelPlan(name, "memory-efficient", f"{skipped}{reason}; memory-efficient takes head_size % "
                          f"{alignment} == 0", tuple(extra + mask + new_kv), mask_grad)
    meff_why = ("memory-efficient takes bf16 only from compute capability 8.0 (trainer.precision=16-mixed "
                "is this GPU's half precision)" if aligned else
                f"memory-efficient needs head_size % {alignment} == 0 at {precision} (head_size={hs})")
    return KernelPlan(name, "math", f"{skipped}{reason}; {meff_why}", tuple(extra + math_maps), mask_grad)


def _math_backend_tensors(B: int, H: int, G: int, T: int, S: int, hs: int, vs: int, a: int,
                          new_v: bool = False) -> list[Tensor_]:
    """What SDPA's math backend (torch's ``_scaled_dot_product_attention_math``) saves for the
    backward beyond its inputs: q and k, each scaled by sqrt(scale), k and v repeated to the H
    query heads under GQA, and the (B, H, T, S) probabilities. It computes bf16/fp16 inputs in
    fp32 unless ``torch.backends.cuda.allow_fp16_bf16_reduction_math_sdp(True)``, so at
    bf16-mixed these are fp32 copies. Its pre-softmax scores live only in the forward (one map,
    within ``KernelPlan.transient_bytes``). ``new_v``: v is not the layer's own (a sink's zero
    key appended), so even saved as it is it is new. tests/test_plan.py reads what it saves."""
    m = 2 if a == 2 and torch.backends.cuda.fp16_bf16_reduction_math_sdp_allowed() else 4
    copy = ", ".join(["in fp32"] * (m != a) + [f"repeated to {H} heads"] * (G != H))
    tensors = [Tensor_("math backend: probabilities (saved)", (B, H, T, S), m),
               Tensor_("math backend: scaled q (saved)", (B, H, T, hs), m, per_position=True),
               Tensor_("math backend: scaled k" + (f", {copy}" if copy else "") + " (saved)", (B, H, S, hs), m,
                       per_position=True)]
    if copy:  # else v itself is saved, already counted with the layer unless it is new
        tensors.append(Tensor_(f"math backend: v, {copy} (saved)", (B, H, S, vs), m, per_position=True))
    elif new_v:
        tensors.append(Tensor_("math backend: v with the sink's zero key (saved)", (B, G, S, vs), m,
                               per_position=True))
    return tensors


def estimate_peak_bytes(model_config: ModelConfig, seq_len: int, batch_size: int, precision: str,
                        kernel: KernelPlan | str | None = None, device_type: str = "cuda",
                        checkpointing: bool = False, capability: tuple[int, int] | None = None) -> int:
    """Peak bytes of one training step (forward, backward, AdamW), the module docstring's formula.

    ``kernel``: a ``KernelPlan``, a kernel name, or None for the configuration's (``auto``
    resolved for ``device_type``). ``checkpointing``: trainer.activation_checkpointing."""
    _, c = resolve(model_config)
    if not isinstance(kernel, KernelPlan):
        kernel = kernel_plan(c, seq_len, batch_size, precision, device_type, kernel, capability=capability)
    a = activation_bytes(precision)
    P = total_parameters(c)
    static = 8 * P if precision in HALF_TRUE else 16 * P + (2 * P if a == 2 else 0)
    N = batch_size * seq_len
    h, f, H, G, hs = c.n_embd, c.mlp_hidden_size, c.n_head, c.n_query_groups, c.head_size
    own = own_activation_bytes_per_token(c, precision)
    layer = N * (16 * h + 2 * a * h + a * hs * (4 * H + 3 * G) + 4 * a * f + own) + kernel.extra_bytes
    head = N * ((8 + a) * h + (8 + a) * c.padded_vocab_size)
    kept = c.n_layer * 4 * N * h + layer if checkpointing else c.n_layer * layer
    return round(static + kept + head + kernel.transient_bytes)  # ``own`` is an average: a fraction of a byte


def _fmt(n: float) -> str:
    return f"{n / GiB:.2f} GiB" if n >= GiB / 10 else f"{n / 2 ** 20:.1f} MiB"


def auto_precision(device_type: str, capability: tuple[int, int] | None = None) -> str:
    """What ``trainer.precision=auto`` is on a device: bf16-mixed on GPUs with bf16 tensor cores
    (compute capability 8.0 and later; None: assumed), 16-mixed on older ones with fp16 tensor
    cores (V100, T4: torch only emulates bf16 there, and SDPA's fused kernels refuse it), else
    32-true (a CPU, or an older GPU)."""
    if device_type != "cuda" or (capability is not None and tuple(capability) < (7, 0)):
        return "32-true"
    return "16-mixed" if capability is not None and tuple(capability) < (8, 0) else "bf16-mixed"


def _resolve_precision(precision: str, device_type: str, capability: tuple[int, int] | None = None) -> str:
    return auto_precision(device_type, capability) if precision == "auto" else precision


def check_fits_device(model_config: ModelConfig, trainer: Any, device_name: str | None = None,
                      memory_bytes: int | None = None, precision: str | None = None,
                      capability: tuple[int, int] | None = None) -> None:
    """Refuse a run whose estimated peak exceeds the device's memory, naming what would fit.

    ``trainer``: the ``TrainConfig.trainer`` section (batch_size, accumulate_grad_batches,
    seq_len, precision). ``memory_bytes`` (measured, or injected by tests) overrides the
    ``DEVICE_MEMORY`` entry of ``device_name``; ``precision`` (resolved) overrides
    ``trainer.precision``."""
    memory = memory_bytes if memory_bytes is not None else device_memory(device_name or "cpu")
    device_type = "cpu" if (device_name or "").lower() == "cpu" else "cuda"
    precision = _resolve_precision(precision or trainer.precision, device_type, capability)
    b, T, acc = trainer.batch_size, trainer.seq_len, trainer.accumulate_grad_batches
    recompute = bool(getattr(trainer, "activation_checkpointing", False))

    def est(batch: int, seq: int, checkpointing: bool = recompute) -> int:
        return estimate_peak_bytes(model_config, seq, batch, precision, device_type=device_type,
                                   checkpointing=checkpointing, capability=capability)

    need = est(b, T)
    if need <= memory:
        return
    global_batch = b * acc
    fits = []
    if not recompute and est(b, T, checkpointing=True) <= memory:
        fits.append(f"trainer.activation_checkpointing=true (~{_fmt(est(b, T, checkpointing=True))})")
    micro = next((m for m in range(b - 1, 0, -1) if global_batch % m == 0 and est(m, T) <= memory), None)
    if micro is not None:
        fits.append(f"trainer.batch_size={micro} trainer.accumulate_grad_batches={global_batch // micro} "
                    f"(same global batch of {global_batch}; ~{_fmt(est(micro, T))})")
    seq = T // 2
    while seq >= 16 and est(b, seq) > memory:
        seq //= 2
    if seq >= 16:
        fits.append(f"trainer.seq_len={seq} (~{_fmt(est(b, seq))})")
    where = device_name or "the device"
    raise ValueError(
        f"estimated peak training memory {_fmt(need)} ({need:,} bytes; variant {model_config.variant!r}, "
        f"trainer.batch_size={b}, trainer.seq_len={T}, {precision}; attnlab.plan) exceeds {where}'s "
        f"{_fmt(memory)} ({memory:,} bytes); settings that fit: "
        f"{'; or '.join(fits) if fits else 'none at this model size'}")


def slow_kernel_warning(model_config: ModelConfig, seq_len: int, batch_size: int, precision: str,
                        capability: tuple[int, int] | None = None) -> str | None:
    """On CUDA: why a run's attention materialises (B, H, T, S) maps where a fused kernel would not,
    or None: SDPA's math backend (e.g. the study's head size 620 at bf16), or the explicit kernel
    where FlexAttention would express the variant but cannot take its head size."""
    plan = kernel_plan(model_config, seq_len, batch_size, precision, "cuda", capability=capability)
    block, resolved = resolve(model_config)
    flex_expresses = "flex" in supported_kernels(block, resolved)
    flex_compiles = flex_takes_head_sizes(block.attention_head_sizes(resolved))
    flex_skipped = plan.backend == "explicit" and flex_expresses and not flex_compiles
    if plan.backend != "math" and not flex_skipped:
        return None
    maps = sum(t.nbytes for t in plan.extra if t.score_map)
    limit = min(FLASH_MAX_HEAD_SIZE, FLEX_MAX_HEAD_SIZE)
    width = resolved.n_embd
    heads = [n for n in range(1, width + 1) if width % n == 0 and (width // n) % 8 == 0 and width // n <= limit]
    if heads:
        avoid = (f"a head_size that is a multiple of 8 and <= {limit} (model.n_head={' or '.join(map(str, heads[:3]))}"
                 f" at model.n_embd={width})")
    else:  # the study's 620 = 4 x 155: no head count gives a multiple of 8
        wider = -(-width // 128) * 128
        avoid = (f"a head_size that is a multiple of 8 and <= {limit}, which no model.n_head gives at "
                 f"model.n_embd={width} (a different model, e.g. model.n_embd={wider} model.n_head={wider // 128})")
    avoid += ", or model.attn_kernel=flex," if flex_expresses and flex_compiles else ""
    where = "SDPA's math backend" if plan.backend == "math" else "the explicit kernel"
    return (f"variant {model_config.variant!r} attends on {where} ({plan.why}): it keeps "
            f"{_fmt(maps)} of (B, H, T, S) maps per layer and is several times slower than a fused kernel; "
            f"{avoid} avoids it (python -m attnlab.plan shows every variant's kernel)")


def check_flex_head_size(model_config: ModelConfig) -> None:
    """Refuse ``model.attn_kernel=flex`` on a GPU at head sizes its kernel cannot compile, before
    anything is written (it would fail at the first step's compile, after the run directory exists)."""
    if model_config.attn_kernel != "flex":
        return
    block, resolved = resolve(model_config)
    problem = flex_head_size_problem(block.attention_head_sizes(resolved))
    if problem is not None:
        others = ["auto (the default)", *(k for k in kernels_for(block.attention_spec(resolved)) if k != "flex")]
        raise ValueError(f"model.attn_kernel=flex cannot train variant {model_config.variant!r} at head_size="
                         f"{resolved.head_size} on a GPU: {problem}; use model.attn_kernel="
                         f"{', '.join(others[:-1])} or {others[-1]}, or a model.n_head that makes head_size "
                         f"{FLEX_MIN_HEAD_SIZE}..{FLEX_MAX_HEAD_SIZE}")


def format_plan(preset: str, seq_len: int, batch_size: int, device: str, precision: str,
                variants: list[str] | None = None) -> str:
    device_type = "cpu" if device.lower() == "cpu" else "cuda"
    capability = device_capability(device) if device_type == "cuda" else None
    precision = _resolve_precision(precision, device_type, capability)
    memory = device_memory(device)
    cudnn_first = device_type == "cuda" and prefers_cudnn(device)
    lines = [f"Plan: preset {preset}, seq_len={seq_len}, batch_size={batch_size}, {precision}, "
             f"device {device} ({_fmt(memory)})"]
    if capability is not None and capability < (8, 0) and precision.startswith("bf16"):
        lines.append(f"{device} (compute capability {capability[0]}.{capability[1]}) has no bf16 tensor cores: "
                     f"torch emulates bf16 slowly and SDPA's fused kernels refuse it; its half precision is "
                     f"16-mixed (--precision 16-mixed, trainer.precision=16-mixed)")
    if cudnn_first:
        lines.append("SDPA tries cuDNN's kernel first on this GPU (compute capability 9.0/10.x, cuDNN > 9.15; "
                     "a torch that bundles an older cuDNN tries flash first)")
    lines.append("")
    for name in variants or available_variants():
        get_variant(name)  # an unknown name: the registry's error
        config, reason = variant_at_preset(preset, name)
        plan = kernel_plan(config, seq_len, batch_size, precision, device_type, cudnn_first=cudnn_first,
                           capability=capability)
        peak = estimate_peak_bytes(config, seq_len, batch_size, precision, plan, device_type)
        shape = f" (n_head={config.n_head}: {reason})" if reason else ""
        lines.append(f"{name}{shape}: kernel {plan.kernel}, backend {plan.backend}: {plan.why}")
        for where, tensors in (("per layer", plan.extra), ("in one layer's backward", plan.backward)):
            for t in tensors:
                dims = "x".join(str(d) for d in t.shape)
                lines.append(f"    {where}: {t.what} ({dims}, {t.bytes_per_element:.4g} B each) = {_fmt(t.nbytes)}")
        own = own_activation_bytes_per_token(config, precision)
        if own:
            tokens = batch_size * seq_len
            lines.append(f"    per layer: {name}'s own activations outside the attention kernel ({tokens:,} tokens, "
                         f"{own:,.0f} B each beyond the baseline block's) = {_fmt(tokens * own)}")
        verdict = "fits" if peak <= memory else "DOES NOT FIT"
        recomputed = estimate_peak_bytes(config, seq_len, batch_size, precision, plan, device_type,
                                         checkpointing=True)
        lines.append(f"    peak estimate {_fmt(peak)} of {_fmt(memory)}: {verdict} "
                     f"(with trainer.activation_checkpointing=true: {_fmt(recomputed)})")
    return "\n".join(lines)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def _known_device(name: str) -> str:
    key = device_key(name)
    if key != "cpu" and key not in DEVICE_MEMORY:
        raise argparse.ArgumentTypeError(f"unknown device {name!r}; known: cpu, {', '.join(sorted(DEVICE_MEMORY))}")
    return name


def main(argv: list[str] | None = None) -> None:
    from variants import available_variants

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="seed100m", choices=sorted(PRESETS))
    parser.add_argument("--seq-len", type=_positive_int, required=True, help="at most the preset's block_size")
    parser.add_argument("--batch-size", type=_positive_int, required=True)
    parser.add_argument("--device", default="h100", type=_known_device,
                        help=f"cpu or one of {', '.join(sorted(DEVICE_MEMORY))}")
    parser.add_argument("--precision", default="auto",
                        choices=["auto", "bf16-mixed", "16-mixed", "bf16-true", "32-true"],
                        help="auto: as trainer.precision=auto resolves it on that device")
    parser.add_argument("--variant", nargs="+", default=None, choices=available_variants(), metavar="VARIANT",
                        help=f"default: every registered variant ({', '.join(available_variants())})")
    args = parser.parse_args(argv)
    block_size = PRESETS[args.preset]["block_size"]
    if args.seq_len > block_size:  # as train.py refuses trainer.seq_len
        parser.error(f"--seq-len {args.seq_len} exceeds preset {args.preset!r}'s block_size={block_size}; "
                     f"allowed: --seq-len <= {block_size}")
    print(format_plan(args.preset, args.seq_len, args.batch_size, args.device, args.precision, args.variant))


if __name__ == "__main__":
    main()

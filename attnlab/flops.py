"""Training FLOPs per token of a model, and the peak FLOP/s of the devices we know (for MFU).

The formula is the PaLM appendix form (Chowdhery et al. 2022, appendix B), the one
nanoGPT and Lightning's examples use:

    flops_per_token = 6 * N + 12 * n_layer * n_head * head_size * T  (+ variant terms)

- ``N`` counts the weights of every ``nn.Linear`` the model multiplies a token by:
  each block's attention projections, the three SwiGLU matrices and the untied
  lm_head. The embedding is a lookup (no multiply) and is left out; biases, norm
  weights and element-wise ops (RMSNorm, SiLU, GELU, RoPE, tanh, softmax, the
  residual adds) cost O(C) per token against the O(C^2) matmuls and are left out too.
  6 = 2 FLOPs per multiply-add forward + 4 backward (gradients of input and weight).
- ``12 * n_layer * n_head * head_size * T`` is q.k^T and probs.v over T keys,
  forward and backward. Like PaLM we count all T keys of every query, not the causal
  half, so numbers compare with PaLM/nanoGPT MFU figures; a causal kernel that skips
  masked tiles does about half this attention work, which overstates MFU slightly
  (by 1-2 percentage points at seed100m, T=2048).
- Variants add their own terms through ``AttentionBlock.flops_per_token``: the
  default counts the block's Linear weights, so a new projection is counted
  automatically; ``qk_scale`` counts its score Linear only on the T rows it computes
  (6 * C * T per token per layer).

``T`` is the training sequence length (``trainer.seq_len``), not ``block_size``.
The result is exact for the matmuls: ``tests/test_flops.py`` checks it against
PyTorch's FLOP counter on one forward and backward pass.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from attnlab.config import ModelConfig
from attnlab.model import GPT
from variants import AttentionBlock


def flops_per_token(config: ModelConfig, seq_len: int) -> float:
    """Training FLOPs (forward + backward) per token at ``seq_len`` tokens per sequence."""
    if not isinstance(seq_len, int) or not 0 < seq_len <= config.block_size:
        raise ValueError(f"seq_len must be an integer in [1, block_size={config.block_size}], "
                         f"got {seq_len!r}")
    with torch.device("meta"):  # shapes only, nothing allocated
        model = GPT(config)
    attention_blocks = [m for m in model.modules() if isinstance(m, AttentionBlock)]
    in_attention = {id(m) for block in attention_blocks for m in block.modules()}
    other_weights = sum(m.weight.numel() for m in model.modules()
                        if isinstance(m, nn.Linear) and id(m) not in in_attention)
    return 6.0 * other_weights + sum(block.flops_per_token(seq_len) for block in attention_blocks)


# Dense (no structured sparsity) peak FLOP/s per GPU, from the vendors' datasheets.
# Precisions: fp32 (CUDA cores), tf32/bf16/fp16/fp8 (tensor cores, fp32 accumulate).
DEVICE_PEAK_FLOPS: dict[str, dict[str, float]] = {
    "b200": dict(tf32=1.1e15, bf16=2.25e15, fp16=2.25e15, fp8=4.5e15, fp32=75e12),
    "h200 nvl": dict(fp32=60e12, tf32=417.5e12, bf16=835.5e12, fp16=835.5e12, fp8=1670.5e12),
    "h200": dict(fp32=67e12, tf32=494.7e12, bf16=989.4e12, fp16=989.4e12, fp8=1978.9e12),
    "h100 nvl": dict(fp32=60e12, tf32=417.5e12, bf16=835.5e12, fp16=835.5e12, fp8=1670.5e12),
    "h100 pcie": dict(fp32=51.2e12, tf32=378e12, bf16=756.5e12, fp16=756.5e12, fp8=1513e12),
    "h100": dict(fp32=67e12, tf32=494.7e12, bf16=989.4e12, fp16=989.4e12, fp8=1978.9e12),  # SXM
    "a100": dict(fp32=19.5e12, tf32=156e12, bf16=312e12, fp16=312e12),
    "l40s": dict(fp32=91.6e12, tf32=183e12, bf16=362e12, fp16=362e12, fp8=733e12),
    "l4": dict(fp32=30.3e12, tf32=60e12, bf16=121e12, fp16=121e12, fp8=242.5e12),
    "a10": dict(fp32=31.2e12, tf32=62.5e12, bf16=125e12, fp16=125e12),
    "v100": dict(fp32=15.7e12, fp16=125e12),
    "rtx 4090": dict(fp32=82.6e12, tf32=82.6e12, bf16=165.2e12, fp16=165.2e12, fp8=330.3e12),
    "rtx 3090": dict(fp32=35.6e12, tf32=35.6e12, bf16=71e12, fp16=71e12),
}

# Lightning precision flags and dtype names -> the table's precision keys.
_PRECISIONS = {
    "32": "fp32", "32-true": "fp32", "fp32": "fp32", "float32": "fp32", "tf32": "tf32",
    "bf16": "bf16", "bf16-mixed": "bf16", "bf16-true": "bf16", "bfloat16": "bf16",
    "16": "fp16", "16-mixed": "fp16", "16-true": "fp16", "fp16": "fp16", "float16": "fp16",
    "fp8": "fp8", "transformer-engine": "fp8",
}


def device_peak_flops(device: torch.device | str, precision: str | torch.dtype) -> float | None:
    """Peak dense FLOP/s of ``device`` at ``precision``, or None where unknown.

    ``device`` is a torch device (``cuda`` looks up the GPU's name) or a GPU name such
    as ``"NVIDIA H100 80GB HBM3"``. ``precision`` is a Lightning precision flag
    (``"bf16-mixed"``, ``"32-true"``, ...) or a dtype. fp32 on a GPU counts at the TF32
    peak when ``torch.set_float32_matmul_precision`` lets matmuls use TF32. CPUs
    return None: their peaks depend on the SKU and clock, so configure one instead.
    """
    key = str(precision).removeprefix("torch.")
    if key not in _PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; allowed: {', '.join(sorted(_PRECISIONS))}")
    precision_key = _PRECISIONS[key]
    name = _device_name(device)
    if name is None:
        return None
    if precision_key == "fp32" and torch.get_float32_matmul_precision() != "highest":
        precision_key = "tf32"
    words = set(re.split(r"[^a-z0-9]+", name))
    for chip, peaks in DEVICE_PEAK_FLOPS.items():  # most specific names first
        if set(chip.split()) <= words:
            return peaks.get(precision_key)
    return None


def _device_name(device: torch.device | str) -> str | None:
    if isinstance(device, str):
        try:
            device = torch.device(device)
        except RuntimeError:  # not a device string: a GPU's marketing name
            return device.lower()
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_name(device).lower()

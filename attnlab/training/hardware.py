"""What a run trains on: the accelerator, the precision, compilation, and the device's name."""

from __future__ import annotations

import platform

import torch

from attnlab.attention import FLEX_CPU_LIMIT
from attnlab.plan import auto_precision


def choose_accelerator(requested: str) -> str:
    """``trainer.accelerator``, with ``auto`` resolved: ``gpu`` where CUDA is available, else ``cpu``."""
    if requested == "cuda":
        return "gpu"  # Lightning's two names for one accelerator; attnlab decides on "gpu"
    if requested != "auto":
        return requested
    return "gpu" if torch.cuda.is_available() else "cpu"


def choose_precision(requested: str, accelerator: str) -> str:
    """``trainer.precision``, with ``auto`` resolved: bf16-mixed on GPUs with bf16 tensor cores
    (compute capability 8.0 and later), 16-mixed on older ones with fp16 tensor cores (V100, T4),
    else 32-true."""
    if requested != "auto":
        return requested
    # By the compute capability, not torch.cuda.is_bf16_supported(), which counts bf16 emulated on
    # a T4 as supported; the plan (attnlab.plan.auto_precision) decides it the same way.
    if accelerator == "gpu" and torch.cuda.is_available():
        return auto_precision("cuda", tuple(torch.cuda.get_device_capability()))
    return "32-true"


def choose_matmul_precision(requested: str, accelerator: str) -> str | None:
    """``trainer.float32_matmul_precision``, with ``auto`` resolved: ``high`` (TF32) on GPUs; None
    (leave torch's setting) on other accelerators."""
    if requested != "auto":
        return requested
    return "high" if accelerator == "gpu" else None


def should_compile(requested: bool | None, accelerator: str) -> bool:
    """``trainer.compile``, with None resolved: on for GPUs, off for the CPU."""
    return requested if requested is not None else accelerator == "gpu"


def root_device(accelerator: str) -> torch.device:
    return torch.device("cuda" if accelerator == "gpu" else "cpu")


def check_accelerator_available(accelerator: str) -> None:
    """Refuse an accelerator this machine does not have before anything is written (Lightning
    would fail later, after the run directory exists)."""
    if accelerator == "gpu" and not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
        raise ValueError(f"trainer.accelerator='gpu' but no CUDA device is visible (torch {torch.__version__}, "
                         f"{build}); on this machine use trainer=cpu or trainer.accelerator=auto, or install a "
                         f"CUDA build of torch (README, \"GPUs, clusters, sweeps\")")
    if accelerator == "mps" and not torch.backends.mps.is_available():
        raise ValueError("trainer.accelerator='mps' but this machine has no Apple MPS device; "
                         "use trainer=cpu or trainer.accelerator=auto")


def check_kernel_can_train(kernel: str, accelerator: str) -> None:
    if kernel == "flex" and accelerator != "gpu":
        raise ValueError(f"model.attn_kernel=flex cannot train on accelerator={accelerator!r}: "
                         f"{FLEX_CPU_LIMIT}")


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"

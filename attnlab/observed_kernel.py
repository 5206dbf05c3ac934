"""Which fused SDPA kernel a forward really calls, to check ``attnlab.plan``'s prediction on a
device (``bench/gpu_check.py`` records both for every case).

SDPA chooses its backend at each call from the inputs (device, dtype, head size, mask, GQA);
the choice shows as the aten op it dispatches to, which a ``TorchDispatchMode`` sees. The math
backend and FlexAttention's compiled kernels show as no fused SDPA op at all.
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# aten op -> the backend name attnlab.plan.KernelPlan uses
FUSED_SDPA_OPS = {
    "_scaled_dot_product_flash_attention": "flash",
    "_scaled_dot_product_flash_attention_for_cpu": "cpu-flash",
    "_scaled_dot_product_efficient_attention": "memory-efficient",
    "_scaled_dot_product_cudnn_attention": "cudnn",
}


class _RecordFusedAttention(TorchDispatchMode):
    # FlexAttention is a higher-order operator: let it (and compiled code) run as without the mode.
    supports_higher_order_operators = True

    @classmethod
    def ignore_compile_internals(cls) -> bool:
        return True

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        packet = getattr(func, "overloadpacket", None)  # None: a higher-order operator
        backend = FUSED_SDPA_OPS.get(packet.__name__) if packet is not None else None
        if backend is not None:
            self.seen.add(backend)
        return func(*args, **(kwargs or {}))


def observed_backends(model: torch.nn.Module, idx: torch.Tensor, autocast_dtype: torch.dtype | None = None) -> set[str]:
    """The fused SDPA backends one eager forward of ``model`` on ``idx`` calls, with gradients on
    (as in training, where a mask that needs a gradient narrows the choice); empty: none."""
    record = _RecordFusedAttention()
    with torch.autocast(idx.device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
        with record:
            model(idx)
    return record.seen


def agrees_with_plan(planned_backend: str, seen: set[str]) -> bool:
    """Whether the backends seen are the plan's: its fused backend alone, or none where it plans
    math, FlexAttention or the explicit kernel."""
    fused = planned_backend in FUSED_SDPA_OPS.values()
    return seen == ({planned_backend} if fused else set())

"""cuDNN's fused attention kernel inside SDPA: where torch chooses it, and where attnlab keeps it out.

Since torch 2.10, ``F.scaled_dot_product_attention`` on a GPU of compute capability 9.0, 10.0 or
10.3 (H100/H200, B200/GB200, B300) tries cuDNN's kernel before flash when the cuDNN it runs with is
newer than 9.15.0 (torch 2.11's Linux wheel on PyPI, built for CUDA 13.0, requires cuDNN 9.19;
wheels built for older CUDA may bundle an older one) and the environment does not set
``TORCH_CUDNN_SDPA_DEPRIORITIZED=1``; deterministic algorithms rule it out (torch's
``sdp_utils.cpp``). attnlab lets it take
only full causal calls (no mask, as many queries as keys: training's, a prompt's) at head sizes
up to 128; elsewhere SDPA chooses among flash, memory-efficient and math as it would without it:

- **calls with a mask.** cuDNN's op takes no gradient for the mask: autograd refuses a float mask
  that needs one (a variant's trainable logit terms, the attention sink) at the forward, and a
  masked cuDNN backward was reported to return NaN query gradients with torch 2.11 at sequence
  lengths of 64 mod 128 where a query's log-sum-exp is below about -88.7. The memory-efficient
  kernel takes the mask and its gradient.
- **a decoding step** (one query against the cache): cuDNN builds an execution graph per shape,
  and the cache's length grows by one every token.
- **head sizes over 128.** torch 2.11 lets cuDNN take up to 256 on sm90; later torch refuses its
  backward between 128 and 256. Flash takes them, whatever the torch version.

``attnlab.plan`` predicts the backend from the same rule (``prefers_cudnn``), and
``bench/gpu_check.py`` records the backend torch really calls next to the prediction.
"""

from __future__ import annotations

import os

import torch
from torch.nn.attention import SDPBackend

CUDNN_MAX_HEAD_SIZE = 128  # the head sizes attnlab lets cuDNN take (see the module docstring)
CUDNN_OWN_MAX_HEAD_SIZE = 256  # what torch 2.11 lets cuDNN take on sm90 (multiples of 8)
WITHOUT_CUDNN = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
# torch's check_prefer_cudnn_attention: the compute capabilities where cuDNN goes first, and the
# cuDNN version it must exceed (9.15.0; 9.15.1 fixed key lengths that are not a multiple of 128).
PREFERRED_CAPABILITIES = frozenset({(9, 0), (10, 0), (10, 3)})
PREFERRED_AFTER_CUDNN = 91500
# For a GPU named rather than present (``python -m attnlab.plan --device h100``): its compute
# capability, and the cuDNN torch 2.11's PyPI wheel (CUDA 13.0) requires. A torch built for another
# CUDA may bundle an older cuDNN, and then flash goes first; on the GPU itself the plan reads both.
NAMED_CAPABILITIES: dict[str, tuple[int, int]] = {
    "h100": (9, 0), "h200": (9, 0), "a100": (8, 0), "a100-40": (8, 0), "a100-80": (8, 0),
    "l4": (8, 9), "rtx4090": (8, 9), "a10": (8, 6), "v100": (7, 0), "v100-16": (7, 0), "t4": (7, 5),
    "b200": (10, 0),
}
ASSUMED_CUDNN = 91900


def device_key(name: str) -> str:
    """A device name as the named-GPU tables (here and ``attnlab.plan.DEVICE_MEMORY``) key it:
    lower case, no spaces, ``-`` for ``_`` ("H100", "a100_40")."""
    return name.lower().replace(" ", "").replace("_", "-")


def keeps_cudnn_out(full_causal: bool, head_sizes: tuple[int, ...]) -> bool:
    """Whether attnlab keeps cuDNN off an SDPA call at these q/k and v head sizes; ``full_causal``:
    the call has no mask and as many queries as keys (``is_causal``)."""
    return not full_causal or max(head_sizes) > CUDNN_MAX_HEAD_SIZE


def cudnn_takes(head_sizes: tuple[int, ...]) -> bool:
    """Whether cuDNN itself (torch 2.11, sm90) takes these q/k and v head sizes, attnlab's rule aside."""
    return max(head_sizes) <= CUDNN_OWN_MAX_HEAD_SIZE and all(size % 8 == 0 for size in head_sizes)


def call_backends(device_type: str, full_causal: bool, head_sizes: tuple[int, ...]) -> list[SDPBackend] | None:
    """The SDPA backends an attention call may use (``torch.nn.attention.sdpa_kernel``), or None
    for torch's own choice: every call off CUDA, and the calls cuDNN may take."""
    if device_type != "cuda" or not keeps_cudnn_out(full_causal, head_sizes):
        return None
    return WITHOUT_CUDNN


def torch_prefers_cudnn(capability: tuple[int, int], cudnn_version: int | None, *,
                        deprioritized: bool = False, deterministic: bool = False) -> bool:
    """torch's rule (2.10 and later): whether SDPA tries cuDNN before flash on this GPU."""
    return (tuple(capability) in PREFERRED_CAPABILITIES and cudnn_version is not None
            and cudnn_version > PREFERRED_AFTER_CUDNN and not deprioritized and not deterministic)


def device_capability(device: str) -> tuple[int, int] | None:
    """The compute capability of ``device``: ``cuda`` (the GPU present) or a GPU named in
    ``NAMED_CAPABILITIES``; None for the CPU or a GPU the plan knows only by its memory."""
    key = device_key(device)
    if key == "cuda" or key.startswith("cuda:"):
        return tuple(torch.cuda.get_device_capability()) if torch.cuda.is_available() else None
    return NAMED_CAPABILITIES.get(key)


def prefers_cudnn(device: str) -> bool:
    """``torch_prefers_cudnn`` for ``device``: ``cuda`` (the GPU present: its capability, its
    cuDNN, the environment and the deterministic flag), ``cpu`` (never) or a GPU named in
    ``NAMED_CAPABILITIES`` (with ``ASSUMED_CUDNN``)."""
    key = device_key(device)
    if key == "cuda" or key.startswith("cuda:"):
        if not torch.cuda.is_available():
            return False
        deterministic = (torch.are_deterministic_algorithms_enabled()
                         and not torch.is_deterministic_algorithms_warn_only_enabled())
        return torch_prefers_cudnn(torch.cuda.get_device_capability(), torch.backends.cudnn.version(),
                                   deprioritized=os.environ.get("TORCH_CUDNN_SDPA_DEPRIORITIZED") == "1",
                                   deterministic=deterministic)
    if key not in NAMED_CAPABILITIES:
        return False  # cpu, or a GPU the plan knows only by its memory
    return torch_prefers_cudnn(NAMED_CAPABILITIES[key], ASSUMED_CUDNN)

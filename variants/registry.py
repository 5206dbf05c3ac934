"""Name -> attention block registry, and the interface every block implements."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, TypeVar

from torch import Tensor, nn

from attnlab.attention import AttentionOutput, KVCache

if TYPE_CHECKING:
    from attnlab.config import ModelConfig


class AttentionBlock(nn.Module):
    """Interface of an attention variant.

    ``__init__(config)`` builds the block's parameters from a ``ModelConfig``.

    ``forward(x, cos, sin, kv_cache=None, need_weights=False) -> AttentionOutput``
        x: (B, T, C), the RMS-normed input of the block.
        cos, sin: (T, rope_n_elem), RoPE tables for the absolute positions of x.
        kv_cache: when given, x continues the cached sequence (incremental decoding):
            its keys/values are appended and queries attend every cached key.
        need_weights: also return the softmax probabilities (B, H, T, S) for
            analysis; this switches to the explicit kernel, so training never asks.
        Returns AttentionOutput(output (B, T, C), weights or None).

    ``configure(config)`` (classmethod) may change model-wide settings the
    variant needs before any module is built (e.g. ``config.bias = True``).
    """

    @classmethod
    def configure(cls, config: ModelConfig) -> None:
        """Adjust model-wide settings for this variant; the default changes nothing."""

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs (forward + backward) per token of this block at ``seq_len`` tokens.

        The default counts 6 per weight of every ``nn.Linear`` in the block (2 forward,
        4 backward); blocks add their attention term and correct for weights they do not
        use in full. ``attnlab.flops`` documents the convention.
        """
        return 6.0 * sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Linear))

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, kv_cache: KVCache | None = None,
                need_weights: bool = False) -> AttentionOutput:  # pragma: no cover - interface
        raise NotImplementedError


_REGISTRY: dict[str, type[AttentionBlock]] = {}

BlockType = TypeVar("BlockType", bound=type[AttentionBlock])


def register(name: str) -> Callable[[BlockType], BlockType]:
    """Class decorator: make an ``AttentionBlock`` subclass selectable as ``variant=<name>``."""

    def decorator(cls: BlockType) -> BlockType:
        if not (isinstance(cls, type) and issubclass(cls, AttentionBlock)):
            raise TypeError(f"@register({name!r}) expects an AttentionBlock subclass, got {cls!r}")
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"attention variant {name!r} is already registered by "
                             f"{_REGISTRY[name].__module__}.{_REGISTRY[name].__qualname__}")
        _REGISTRY[name] = cls
        cls.variant_name = name
        return cls

    return decorator


def unregister(name: str) -> None:
    """Remove a variant (used by tests that register throwaway variants)."""
    _REGISTRY.pop(name, None)


def get_variant(name: str) -> type[AttentionBlock]:
    if name not in _REGISTRY:
        raise ValueError(f"unknown attention variant {name!r}; registered variants: "
                         f"{', '.join(available_variants())}")
    return _REGISTRY[name]


def available_variants() -> list[str]:
    return sorted(_REGISTRY)

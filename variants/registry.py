"""Name -> attention block registry, the interface every block implements, and ``resolve``,
the one place where a variant's declarations (options, model-wide settings, supported
shapes and kernels) are applied to a ``ModelConfig``."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, ClassVar, Literal, TypeVar
from collections.abc import Callable

import torch
from torch import Tensor, nn

from attnlab.attention import AttentionOutput, AttentionSpec, KVCache, check_kernel, kernels_for
from attnlab.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class NoOptions:
    """The options of a variant that has none."""


class AttentionBlock(nn.Module):
    """Interface of an attention variant.

    Declarations (class attributes, read by ``resolve``, the listing and the tests):
        ``Options``: a frozen dataclass of typed options with defaults; the values
            come from ``variant.options`` (``ModelConfig.variant_options``), checked
            against the field types and the dataclass's own ``__post_init__``.
        ``model_settings``: model-wide ``ModelConfig`` fields the variant sets
            (``gelu_bias``: ``{"bias": True}``).
        ``paper``: where the variant comes from.
        ``weights_are_distributions``: whether the analysis weights of a query sum to one.
        ``kernels``: None (any kernel that can express ``attention_spec``), or the only
            kernels the block runs on (a block that computes its attention itself).
        ``supports_kv_cache``: whether decoding with a KV cache equals the full forward.

    ``attention_spec(config)`` (classmethod): the description of the attention, from
    which the kernel is chosen. ``unsupported(config)`` (classmethod): why the variant
    cannot be built with this model shape, or None.

    ``forward(x, cos, sin, kv_cache=None, need_weights=False) -> AttentionOutput``
        x: (B, T, C), the RMS-normed input of the block.
        cos, sin: (T, rope_n_elem), RoPE tables for the absolute positions of x.
        kv_cache: when given, x continues the cached sequence (incremental decoding):
            its keys/values are appended and queries attend every cached key.
        need_weights: also return the attention weights (B, H, T, S) for analysis,
            computed by the explicit kernel from the same description.
    """

    Options: ClassVar[type] = NoOptions
    model_settings: ClassVar[dict[str, Any]] = {}
    paper: ClassVar[str] = ""
    weights_are_distributions: ClassVar[bool] = True
    kernels: ClassVar[tuple[str, ...] | None] = None
    supports_kv_cache: ClassVar[bool] = True  # incremental decoding equals the full forward
    value_head_factor: ClassVar[int] = 1  # v's head size at the attention call, in head sizes (attnlab.plan)
    variant_name: ClassVar[str]
    layer_idx: int = 0  # 0-based depth of the block, set by the model that builds it

    @classmethod
    def attention_spec(cls, config: ModelConfig) -> AttentionSpec:
        """What the attention computes; the default is a causal softmax."""
        return AttentionSpec()

    @classmethod
    def attention_head_sizes(cls, config: ModelConfig) -> tuple[int, int]:
        """(q/k, v) head sizes at the attention call, which decide the fused kernels that take it."""
        return config.head_size, config.head_size * cls.value_head_factor

    @classmethod
    def unsupported(cls, config: ModelConfig) -> str | None:
        """Why this model shape cannot host the variant (refused when it is built), or None."""
        return None

    @classmethod
    def bind_options(cls, options: Any, seq_len: int | None) -> Any:
        """``options`` with any value that names the training run's sequence length replaced
        by ``seq_len`` (the run's ``trainer.seq_len``; None outside a run), so that the saved
        configuration rebuilds the same model without the run (``sigmoid_attn``'s n)."""
        return options

    @classmethod
    def options(cls, config: ModelConfig) -> Any:
        """The typed options of ``config`` (already checked by ``resolve``)."""
        return cls.Options(**config.variant_options)

    def init_parameter(self, name: str, param: Tensor, generator: torch.Generator) -> bool:
        """Initialise one of this block's parameters (``name`` relative to the block) in place,
        drawing from ``generator`` (seeded by the seed and the parameter's full name), and
        return True; or return False to leave it to ``attnlab.model.init_weights``."""
        return False

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
        overrides_attend = "attend" in vars(cls) and any("attend" in vars(base) for base in cls.__mro__[1:])
        if overrides_attend and "kernels" not in vars(cls):
            # Else the plan and the listing would take it for a fused kernel's variant.
            raise TypeError(f"{cls.__qualname__} (variant {name!r}) overrides attend() without declaring "
                            f"kernels: set kernels = (\"explicit\",) on the class if attend computes the "
                            f"attention itself (the plan then counts the maps it keeps), or kernels = None if "
                            f"it calls attnlab.attention.attend (the kernel the run chooses)")
        if not (dataclasses.is_dataclass(cls.Options) and isinstance(cls.Options, type)):
            raise TypeError(f"{cls.__qualname__}.Options must be a dataclass, got {cls.Options!r}")
        _REGISTRY[name] = cls
        cls.variant_name = name
        return cls

    return decorator


def unregister(name: str) -> None:
    """Remove a variant (used by tests that register throwaway variants)."""
    _REGISTRY.pop(name, None)


def unregistered_blocks(module: types.ModuleType) -> list[type[AttentionBlock]]:
    """The ``AttentionBlock`` classes ``module`` defines and did not register (a forgotten
    ``@register``), other than those whose name starts with ``_``."""
    registered = set(_REGISTRY.values())
    return [obj for name, obj in vars(module).items()
            if isinstance(obj, type) and issubclass(obj, AttentionBlock) and obj.__module__ == module.__name__
            and obj not in registered and not name.startswith("_")]


def get_variant(name: str) -> type[AttentionBlock]:
    if name not in _REGISTRY:
        raise ValueError(f"unknown attention variant {name!r}; registered variants: "
                         f"{', '.join(available_variants())}")
    return _REGISTRY[name]


def available_variants() -> list[str]:
    return sorted(_REGISTRY)


def resolve(config: ModelConfig, seq_len: int | None = None) -> tuple[type[AttentionBlock], ModelConfig]:
    """The variant's block class and the configuration it is built with.

    Checks the options (filled in with their defaults, and bound to the training run's
    ``seq_len`` where one is given: ``AttentionBlock.bind_options``), applies the variant's
    ``model_settings``, and refuses a model shape or a forced kernel the variant cannot
    use. Idempotent, so a resolved configuration (as saved in checkpoints) resolves to
    itself.
    """
    block = get_variant(config.variant)
    options = block.bind_options(parse_options(block, config.variant_options), seq_len)
    resolved = dataclasses.replace(config, **block.model_settings,
                                   variant_options=dataclasses.asdict(options))
    reason = block.unsupported(resolved)
    if reason is not None:
        raise ValueError(f"variant {config.variant!r} cannot be built with this model: {reason}")
    if block.kernels is not None and resolved.attn_kernel not in ("auto", *block.kernels):
        raise ValueError(f"model.attn_kernel={resolved.attn_kernel!r} cannot run variant "
                         f"{config.variant!r}: it computes its attention itself; kernels that can: "
                         f"auto, {', '.join(block.kernels)}")
    try:
        spec = block.attention_spec(resolved)
    except ValueError as err:  # an option value the description refuses (AttentionSpec's checks)
        raise ValueError(f"variant {config.variant!r}: {err}; options: {resolved.variant_options}") from None
    check_kernel(resolved.attn_kernel, spec, config.variant)
    return block, resolved


def supported_kernels(block: type[AttentionBlock], config: ModelConfig) -> list[str]:
    """The kernels (besides ``auto``) that can run ``block`` with ``config``."""
    if block.kernels is not None:
        return list(block.kernels)
    return kernels_for(block.attention_spec(config))


def option_fields(block: type[AttentionBlock]) -> dict[str, tuple[Any, Any]]:
    """Option name -> (type, default) of a variant, in declaration order."""
    hints = typing.get_type_hints(block.Options)
    return {f.name: (hints[f.name], f.default) for f in dataclasses.fields(block.Options)}


def parse_options(block: type[AttentionBlock], values: dict[str, Any]) -> Any:
    """``values`` as the variant's typed ``Options``; an unknown key or a bad value is refused
    naming the variant, the option and what is allowed."""
    fields = option_fields(block)
    name = block.variant_name
    allowed = ", ".join(f"{key} ({_describe_type(kind)}, default {default!r})"
                        for key, (kind, default) in fields.items()) or "none"
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"variant {name!r} has no option(s) {', '.join(map(repr, unknown))}; "
                         f"allowed: {allowed}")
    checked = {}
    for key, value in values.items():
        kind = fields[key][0]
        ok, converted = _convert(value, kind)
        if not ok:
            raise ValueError(f"variant.options.{key}={value!r} is not valid for variant {name!r}: "
                             f"expected {_describe_type(kind)}")
        checked[key] = converted
    try:
        return block.Options(**checked)
    except ValueError as err:
        raise ValueError(f"variant {name!r}: {err}") from None


def _convert(value: Any, kind: Any) -> tuple[bool, Any]:
    """(accepted, value) for one option value against its annotated type."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin is Literal:
        return (value in args, value)
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            ok, converted = _convert(value, arg)
            if ok:
                return True, converted
        return False, value
    if kind is type(None):
        return value is None, value
    if kind is bool:
        return isinstance(value, bool), value
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return ok, float(value) if ok else value
    if kind is str:
        return isinstance(value, str), value
    raise TypeError(f"unsupported option type {kind!r}: use bool, int, float, str, Literal or Optional")


def _describe_type(kind: Any) -> str:
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin is Literal:
        return "one of " + "|".join(str(a) for a in args)
    if args:
        return " or ".join(_describe_type(a) for a in args)
    return "none" if kind is type(None) else kind.__name__

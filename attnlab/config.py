"""Model configuration: one typed dataclass, validated once, plus named presets.

The bottom of the dependency graph: imports nothing of the project. What a variant
changes in this configuration (its options, model-wide settings such as ``bias``) is
applied by ``variants.resolve`` when the model is built.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


# Settings that say how a model is computed, not what it is: a checkpoint resumes under
# other values of these (the weights are the same).
RUNTIME_SETTINGS = frozenset({"attn_kernel"})

# ``auto`` picks the fastest kernel that can express the variant on the current device;
# the others force one (attnlab/attention.py ``KERNELS``).
ATTN_KERNELS = ("auto", "sdpa", "flex", "explicit")


@dataclass
class ModelConfig:
    """Dimensions of a LLaMA-2-style decoder and the attention variant it uses.

    Derived fields (``head_size``, ``padded_vocab_size``, ``rope_n_elem``) are
    filled in by ``__post_init__``. ``variant_options`` are the variant's own typed
    options (validated by ``variants.resolve``, which also applies the variant's
    model-wide settings, e.g. ``gelu_bias`` switches ``bias`` on).
    """

    name: str = "custom"
    variant: str = "baseline"
    vocab_size: int = 8000
    padding_multiple: int = 64  # pad the embedding rows for efficient matmul shapes
    block_size: int = 256  # maximum context length
    n_layer: int = 4
    n_head: int = 1
    n_query_groups: int | None = None  # None -> n_head (MHA); 1 -> MQA; else GQA
    n_embd: int = 128
    intermediate_size: int = 512  # SwiGLU hidden width
    # The MLP width that gives this variant baseline's parameter count, when a run asked for
    # model.match_params=true (attnlab.params.match_parameters); None: intermediate_size.
    matched_intermediate_size: int | None = None
    rotary_percentage: float = 1.0  # fraction of head_size that RoPE rotates (0: no RoPE)
    rope_base: int = 10_000
    norm_eps: float = 1e-6
    bias: bool = False  # biases on every attention/MLP Linear
    lm_head_bias: bool = False
    attn_kernel: str = "auto"  # one of ATTN_KERNELS
    init_std: float = 0.02
    variant_options: dict[str, Any] = field(default_factory=dict)

    # derived
    head_size: int = field(init=False)
    padded_vocab_size: int = field(init=False)
    rope_n_elem: int = field(init=False)

    def __post_init__(self) -> None:
        for attr in ("vocab_size", "padding_multiple", "block_size", "n_layer", "n_head",
                     "n_embd", "intermediate_size", "rope_base"):
            value = getattr(self, attr)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"model.{attr} must be a positive integer, got {value!r}")
        if self.matched_intermediate_size is not None and (
                not isinstance(self.matched_intermediate_size, int) or self.matched_intermediate_size <= 0):
            raise ValueError(f"matched_intermediate_size must be a positive integer or None, got "
                             f"{self.matched_intermediate_size!r}")
        if self.n_query_groups is None:
            self.n_query_groups = self.n_head
        if self.n_embd % self.n_head != 0:
            raise ValueError(
                f"model.n_embd={self.n_embd} is not divisible by model.n_head={self.n_head}; "
                f"choose n_head from the divisors of n_embd"
            )
        if self.n_query_groups <= 0 or self.n_head % self.n_query_groups != 0:
            raise ValueError(
                f"model.n_head={self.n_head} is not divisible by model.n_query_groups="
                f"{self.n_query_groups}; allowed: a positive divisor of n_head "
                f"({', '.join(str(d) for d in _divisors(self.n_head))})"
            )
        if not 0.0 <= self.rotary_percentage <= 1.0:
            raise ValueError(f"model.rotary_percentage must be in [0, 1] (0: no RoPE), "
                             f"got {self.rotary_percentage}")
        if self.norm_eps <= 0 or self.init_std <= 0:
            raise ValueError("model.norm_eps and model.init_std must be positive")
        self.head_size = self.n_embd // self.n_head
        # RoPE rotates pairs of channels, so the rotated width must be even.
        self.rope_n_elem = int(self.rotary_percentage * self.head_size) // 2 * 2
        if self.rope_n_elem == 0 and self.rotary_percentage > 0:
            raise ValueError(f"model.rotary_percentage={self.rotary_percentage} rotates no channel "
                             f"of head_size={self.head_size}")
        self.padded_vocab_size = -(-self.vocab_size // self.padding_multiple) * self.padding_multiple
        if self.attn_kernel not in ATTN_KERNELS:
            raise ValueError(f"unknown attention kernel {self.attn_kernel!r} (model.attn_kernel); "
                             f"available: {', '.join(ATTN_KERNELS)}")
        if not isinstance(self.variant, str) or not self.variant:
            raise ValueError(f"variant must be a variant name, got {self.variant!r}")
        if not isinstance(self.variant_options, dict):
            raise ValueError(f"variant options must be a mapping of option names to values, "
                             f"got {self.variant_options!r}")

    @property
    def mlp_hidden_size(self) -> int:
        """The SwiGLU hidden width the model is built with."""
        return self.matched_intermediate_size or self.intermediate_size

    @classmethod
    def from_preset(cls, preset: str, **overrides: Any) -> ModelConfig:
        if preset not in PRESETS:
            raise ValueError(f"unknown model preset {preset!r}; available: {', '.join(sorted(PRESETS))}")
        fields = {f.name for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise ValueError(f"unknown model setting(s) {unknown}; allowed: {sorted(fields)}")
        return cls(**{"name": preset, **PRESETS[preset], **overrides})

    def to_dict(self) -> dict[str, Any]:
        """The constructor arguments (derived fields excluded), for checkpoints and run dirs."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}


def ladder_rung(n_embd: int, n_layer: int, n_head: int, vocab_size: int, block_size: int,
                mlp_multiple: int) -> dict[str, Any]:
    """One rung of a scaling ladder with the study's shape rules (pre-norm LLaMA block, SwiGLU,
    RoPE, vocabulary padded to 64): the SwiGLU width is 8/3 * n_embd rounded up to
    ``mlp_multiple``, as LLaMA's ``multiple_of``. Rungs grow width and depth together."""
    intermediate_size = -(-8 * n_embd // (3 * mlp_multiple)) * mlp_multiple
    return dict(vocab_size=vocab_size, block_size=block_size, n_layer=n_layer, n_head=n_head,
                n_embd=n_embd, intermediate_size=intermediate_size)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


PRESETS: dict[str, dict[str, Any]] = {
    # The study's model (docs/study.md): 1 head per layer, head size = n_embd, 103.44M parameters.
    "seed100m": dict(vocab_size=35_000, block_size=4096, n_layer=10, n_head=1, n_embd=620,
                     intermediate_size=2400),
    # The study's shape scaled down for CPU demos and tests (1 head, like seed100m).
    "tiny": dict(vocab_size=8000, block_size=256, n_layer=4, n_head=1, n_embd=128,
                 intermediate_size=352),
    # A conventional multi-head GQA baseline of ~100M parameters at the study's vocabulary
    # (8 layers rather than 12: the untied 35k-row embedding and head already hold 54M).
    "gqa100m": dict(vocab_size=35_000, block_size=2048, n_layer=8, n_head=12, n_query_groups=4,
                    n_embd=768, intermediate_size=2048),
    # The synthetic recall tasks on CPU (configs/experiment/recall.yaml): 2 layers (the least an
    # induction circuit needs), 2 heads of 32 (every variant runs: diff_attn pairs heads,
    # talking_heads mixes them), the task's vocabulary, block_size = the experiment's seq_len.
    "recall": dict(vocab_size=64, block_size=32, n_layer=2, n_head=2, n_embd=64,
                   intermediate_size=128),
}
# Scaling ladders (configs/model/ladder/, configs/experiment/ladder.yaml): `python -m attnlab.params
# --ladder` lists each rung's parameters and FLOPs per token.
# CPU: width/depth 16 at every rung, two heads (diff_attn pairs them), the bundled corpus's vocabulary;
# non-embedding parameters 26.6k -> 397k (15x).
LADDERS: dict[str, tuple[str, ...]] = {
    "cpu": ("ladder_c1", "ladder_c2", "ladder_c3", "ladder_c4"),
    # GPU: heads of 64, the study's 35k vocabulary and 2,048-token context; 21M -> 367M parameters.
    "gpu": ("ladder_g1", "ladder_g2", "ladder_g3", "ladder_g4", "ladder_g5"),
}
for _i, (_embd, _layers) in enumerate([(32, 2), (48, 3), (64, 4), (80, 5)], start=1):
    PRESETS[f"ladder_c{_i}"] = ladder_rung(_embd, _layers, 2, 8000, 256, mlp_multiple=16)
for _i, (_embd, _layers) in enumerate([(256, 4), (512, 8), (768, 12), (1024, 16), (1152, 18)], start=1):
    PRESETS[f"ladder_g{_i}"] = ladder_rung(_embd, _layers, _embd // 64, 35_000, 2048, mlp_multiple=64)

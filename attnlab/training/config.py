"""Typed configuration of a training run: the schema Hydra composes ``configs/`` into.

Defaults live here; ``configs/*.yaml`` select presets and ``key=value`` overrides
them. Hydra validates keys and types against these dataclasses (unknown keys
are errors); ``TrainConfig.validate`` checks values once, before any work.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from attnlab.config import PRESETS, ModelConfig
from attnlab.data.config import DataConfig

PRECISIONS = ("auto", "32-true", "bf16-mixed", "16-mixed", "bf16-true")
NONFINITE_POLICIES = ("stop", "skip")


@dataclass
class VariantSection:
    name: str = "baseline"
    options: dict[str, Any] = field(default_factory=dict)  # passed to ModelConfig.variant_options


@dataclass
class ModelSection:
    """A named preset plus optional overrides (None keeps the preset's value)."""

    preset: str = "tiny"
    vocab_size: Optional[int] = None  # None: the tokenizer's vocabulary size
    block_size: Optional[int] = None
    n_layer: Optional[int] = None
    n_head: Optional[int] = None
    n_query_groups: Optional[int] = None
    n_embd: Optional[int] = None
    intermediate_size: Optional[int] = None
    rotary_percentage: Optional[float] = None
    rope_base: Optional[int] = None
    attn_kernel: str = "sdpa"

    def build(self, variant: VariantSection, vocab_size: int) -> ModelConfig:
        overrides = {k: v for k, v in vars(self).items() if k != "preset" and v is not None}
        overrides.setdefault("vocab_size", vocab_size)
        return ModelConfig.from_preset(self.preset, variant=variant.name,
                                       variant_options=dict(variant.options), **overrides)


@dataclass
class OptimConfig:
    lr: float = 2e-3
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 30
    weight_decay: float = 0.1  # not applied to norms, biases and embeddings
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0  # max gradient norm; 0 disables clipping


@dataclass
class TrainerSection:
    accelerator: str = "auto"
    devices: Any = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "auto"  # auto: bf16-mixed on GPUs that support it, else 32-true
    compile: Optional[bool] = None  # None: on for GPU, off for CPU
    # Defaults: the CPU demo (tiny preset, ~2-3 minutes on 2 cores); see configs/experiment/.
    max_steps: int = 300
    batch_size: int = 8  # micro-batch per device
    accumulate_grad_batches: int = 1
    seq_len: int = 128
    val_every_n_steps: int = 50
    val_batches: int = 10
    log_every_n_steps: int = 10
    checkpoint_every_n_steps: Optional[int] = None  # last.ckpt cadence; None: at each validation
    num_workers: int = 0
    progress_bar: bool = True
    peak_flops: Optional[float] = None  # device peak FLOP/s for MFU; None: the known table
    # A NaN/Inf training loss: "stop" (raise, naming the step and the last good checkpoint)
    # or "skip" the batch (no update; still stops after 10 in a row).
    nonfinite_loss: str = "stop"


@dataclass
class TrainConfig:
    experiment_name: str = "default"  # results/runs/<experiment_name>/<variant>/seed<k>/
    seed: int = 0
    results_dir: str = "results/runs"
    resume: Optional[str] = None  # "auto" (the run's last checkpoint) or a checkpoint path
    overwrite: bool = False  # replace an existing run directory (it is moved aside, not deleted)
    variant: VariantSection = field(default_factory=VariantSection)
    model: ModelSection = field(default_factory=ModelSection)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerSection = field(default_factory=TrainerSection)
    optim: OptimConfig = field(default_factory=OptimConfig)

    def validate(self) -> None:
        """Fail fast, naming the bad value and what is allowed."""
        from variants import get_variant

        get_variant(self.variant.name)
        if self.model.preset not in PRESETS:
            raise ValueError(f"unknown model preset {self.model.preset!r}; available: "
                             f"{', '.join(sorted(PRESETS))}")
        t, o = self.trainer, self.optim
        for name, value in [("trainer.max_steps", t.max_steps), ("trainer.batch_size", t.batch_size),
                            ("trainer.seq_len", t.seq_len), ("trainer.val_every_n_steps", t.val_every_n_steps),
                            ("trainer.val_batches", t.val_batches),
                            ("trainer.accumulate_grad_batches", t.accumulate_grad_batches),
                            ("trainer.log_every_n_steps", t.log_every_n_steps)]:
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if o.lr <= 0:
            raise ValueError(f"optim.lr must be positive, got {o.lr}")
        if not 0 <= o.min_lr_ratio <= 1:
            raise ValueError(f"optim.min_lr_ratio must be in [0, 1], got {o.min_lr_ratio}")
        if o.warmup_steps < 0 or o.weight_decay < 0 or o.grad_clip < 0:
            raise ValueError("optim.warmup_steps, optim.weight_decay and optim.grad_clip must be >= 0")
        if t.precision not in PRECISIONS:
            raise ValueError(f"unknown trainer.precision {t.precision!r}; allowed: {', '.join(PRECISIONS)}")
        if t.nonfinite_loss not in NONFINITE_POLICIES:
            raise ValueError(f"unknown trainer.nonfinite_loss {t.nonfinite_loss!r}; allowed: "
                             f"{', '.join(NONFINITE_POLICIES)}")
        if not self.experiment_name or "/" in self.experiment_name:
            raise ValueError(f"experiment_name must be a non-empty name without '/', "
                             f"got {self.experiment_name!r}")


def register_schema() -> None:
    """Make ``TrainConfig`` the schema ``configs/train.yaml`` composes into (``train_schema``)."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="train_schema", node=TrainConfig)

"""Typed configuration of a training run: the schema Hydra composes ``configs/`` into.

Defaults live here; ``configs/*.yaml`` select presets and ``key=value`` overrides
them. Hydra validates keys and types against these dataclasses (unknown keys
are errors); ``TrainConfig.validate`` checks values once, before any work.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from attnlab.config import PRESETS, ModelConfig
from attnlab.data.config import DataConfig
from attnlab.params import match_parameters
from variants import available_variants, get_variant, resolve
from variants.registry import option_fields, parse_options

PRECISIONS = ("auto", "32-true", "bf16-mixed", "16-mixed", "bf16-true")
NONFINITE_POLICIES = ("stop", "skip")
MATMUL_PRECISIONS = ("auto", "highest", "high", "medium")  # torch.set_float32_matmul_precision's, and auto
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")  # cuda: the same as gpu
LOGGERS = ("tensorboard", "wandb", "mlflow")
MAX_SEED = 2**32 - 1  # numpy's seed range


@dataclass
class VariantSection:
    """``variant=<name>`` selects a registered variant; its group entry carries the options'
    defaults (derived from the variant's ``Options``), so ``variant.options.<key>=...`` works."""

    name: str = "baseline"
    options: dict[str, Any] = field(default_factory=dict)  # the variant's typed options


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
    attn_kernel: str = "auto"  # auto: the fastest kernel that can run the variant here
    # Adjust the MLP width so that the variant has baseline's parameter count (within 0.5%),
    # or refuse the run if that cannot be done (attnlab.params.match_parameters).
    match_params: bool = False

    def build(self, variant: VariantSection, vocab_size: int, seq_len: int | None = None) -> ModelConfig:
        """The model configuration as the variant resolves it (its options checked, bound to
        the run's ``seq_len`` and its model-wide settings applied), so run files show what is
        trained."""
        overrides = {k: v for k, v in vars(self).items()
                     if k not in ("preset", "match_params") and v is not None}
        overrides.setdefault("vocab_size", vocab_size)
        config = resolve(ModelConfig.from_preset(self.preset, variant=variant.name,
                                                 variant_options=dict(variant.options), **overrides),
                         seq_len=seq_len)[1]
        return match_parameters(config) if self.match_params else config


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

    def validate(self) -> None:
        for name, allowed, ok in [("lr", "positive", _positive), ("min_lr_ratio", "in [0, 1]", _unit),
                                  ("warmup_steps", "an integer >= 0", _non_negative_int),
                                  ("weight_decay", ">= 0", _non_negative), ("beta1", "in [0, 1)", _beta),
                                  ("beta2", "in [0, 1)", _beta), ("eps", "positive", _positive),
                                  ("grad_clip", ">= 0 (0: no clipping)", _non_negative)]:
            _check(f"optim.{name}", getattr(self, name), allowed, ok)


@dataclass
class TrainerSection:
    accelerator: str = "auto"
    devices: Any = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "auto"  # auto: bf16-mixed on GPUs that support it, else 32-true
    compile: Optional[bool] = None  # None: on for GPU, off for CPU
    # Recompute each block's activations in the backward instead of keeping them: less memory
    # (attnlab.plan estimates how much) for one more forward pass per step, the same numbers.
    activation_checkpointing: bool = False
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
    # torch's intra-op threads for this run; None: torch's default (all cores, or what the
    # launcher's workers were given: hydra/launcher=joblib gives each of its N workers cores/N).
    threads: Optional[int] = None
    # A NaN/Inf training loss: "stop" (raise, naming the step and the last good checkpoint)
    # or "skip" the batch (no update; still stops after 10 in a row).
    nonfinite_loss: str = "stop"
    # torch.set_float32_matmul_precision for the run: "high" lets fp32 matmuls (those autocast
    # leaves in fp32, or all of them at 32-true) use TF32 tensor cores; "highest" keeps exact fp32
    # (on a CPU, "high"/"medium" let oneDNN use TF32/bf16 too). auto: high on a GPU (as Lightning
    # advises there), torch's own setting on a CPU.
    float32_matmul_precision: str = "auto"

    def one_process(self) -> bool:
        """Whether Lightning trains in this process alone: one node, one device (1, "1", [3], "3,");
        ``auto`` and -1 may be several."""
        devices = self.devices
        if isinstance(devices, str) and "," in devices:
            count = len([d for d in devices.split(",") if d])
        elif isinstance(devices, (list, tuple)):
            count = len(devices)
        else:
            count = int(devices) if str(devices).isdigit() else None
        return self.num_nodes == 1 and count == 1

    def validation_warning(self) -> str | None:
        """What a user should hear before training when the last steps are never validated: a short
        smoke run that would finish with nothing to evaluate, or a final loss older than the run."""
        steps, every = self.max_steps, self.val_every_n_steps
        if steps < every:
            return (f"trainer.max_steps={steps} < trainer.val_every_n_steps={every}: this run never validates, "
                    f"so it records no final_val_loss (evaluate.py will skip it) and, unless "
                    f"trainer.checkpoint_every_n_steps is at most {steps}, writes no checkpoint; set "
                    f"trainer.val_every_n_steps={steps} (or less) to evaluate it")
        if steps % every:
            last = steps - steps % every
            return (f"trainer.max_steps={steps} is not a multiple of trainer.val_every_n_steps={every}: the last "
                    f"validation is at step {last}, so final_val_loss is {steps - last} steps older than the "
                    f"model; set trainer.max_steps={last + every} or trainer.val_every_n_steps to a divisor of it")
        return None

    def validate(self) -> None:
        for name in ("max_steps", "batch_size", "seq_len", "val_every_n_steps", "val_batches",
                     "accumulate_grad_batches", "log_every_n_steps", "num_nodes"):
            _check(f"trainer.{name}", getattr(self, name), "a positive integer", _positive_int)
        _check("trainer.checkpoint_every_n_steps", self.checkpoint_every_n_steps,
               "a positive integer or null (null: at each validation)", lambda v: v is None or _positive_int(v))
        _check("trainer.num_workers", self.num_workers, "an integer >= 0", _non_negative_int)
        _check("trainer.threads", self.threads, "a positive integer or null (null: torch's default)",
               lambda v: v is None or _positive_int(v))
        _check("trainer.peak_flops", self.peak_flops, "positive (FLOP/s) or null (null: the known table)",
               lambda v: v is None or _positive(v))
        _check("trainer.devices", self.devices,
               "a positive integer, -1 (every device), 'auto', or a list of device indices",
               _valid_devices)
        _check_choice("trainer.accelerator", self.accelerator, ACCELERATORS)
        _check_choice("trainer.precision", self.precision, PRECISIONS)
        _check_choice("trainer.nonfinite_loss", self.nonfinite_loss, NONFINITE_POLICIES)
        _check_choice("trainer.float32_matmul_precision", self.float32_matmul_precision, MATMUL_PRECISIONS)
        if self.strategy != "auto":
            from lightning.pytorch.strategies import StrategyRegistry

            _check_choice("trainer.strategy", self.strategy,
                          ("auto", *sorted(StrategyRegistry.available_strategies())))


BUDGET_COUNTS = ("non_embedding", "total")
LADDER_LR = ("given", "tuned", "lower", "higher")


@dataclass
class BudgetSection:
    """A token budget tied to the model's size (scaling ladders): when ``tokens_per_param`` is
    set, ``trainer.max_steps``, ``optim.warmup_steps`` and ``trainer.val_every_n_steps`` are
    derived from it (attnlab/training/budget.py), so warm-up and the cosine schedule scale with
    the budget. The parameter count is baseline's at the same shape, so every variant of a rung
    trains on the same tokens."""

    tokens_per_param: Optional[float] = None  # None: trainer.max_steps as given
    count: str = "non_embedding"  # which parameters: non_embedding (not wte, not lm_head) or total
    warmup_fraction: float = 0.1  # of the steps
    validations: int = 5  # evenly spaced over the run (the last at the final step)
    repeat_data: bool = False  # a budget beyond the training split: refuse (false) or repeat it, saying so

    def validate(self) -> None:
        _check("budget.tokens_per_param", self.tokens_per_param, "positive or null (null: trainer.max_steps)",
               lambda v: v is None or _positive(v))
        _check_choice("budget.count", self.count, BUDGET_COUNTS)
        _check("budget.warmup_fraction", self.warmup_fraction, "in [0, 1)", _beta)
        _check("budget.validations", self.validations, "a positive integer", _positive_int)


@dataclass
class LadderSection:
    """A run as a member of a scaling ladder (configs/experiment/ladder.yaml): with ``name`` set
    the run's experiment is ``<name>-<model preset>-lr<lr>`` (one per rung and learning rate)
    and ``python evaluate.py experiment=<name>`` compares the whole ladder (attnlab/ladder.py).
    ``lr=tuned`` takes ``optim.lr`` from the ladder's finished runs at ``selection_seeds``: per
    variant and rung, the rate with the lowest mean final validation loss; those seeds are then
    not allowed in the comparison, so the rate is never chosen on the runs it is reported with.
    ``lr=lower``/``higher`` widens that grid on a selection seed: one ``widen_factor`` below the
    lowest (above the highest) rate tried when that rate is the choice, else nothing to train."""

    name: Optional[str] = None  # None: not a ladder run
    lr: str = "given"  # given: optim.lr; tuned: chosen on the selection seeds' runs; lower/higher: widen
    selection_seeds: list[int] = field(default_factory=lambda: [100])
    widen_factor: float = 2.0  # lr=lower/higher: the step beyond the grid's edge

    def validate(self) -> None:
        _check("ladder.name", self.name, "null or a non-empty name without '/' or '-'",
               lambda v: v is None or (isinstance(v, str) and v != "" and "/" not in v and "-" not in v))
        _check_choice("ladder.lr", self.lr, LADDER_LR)
        _check("ladder.selection_seeds", self.selection_seeds, "a non-empty list of seeds",
               lambda v: isinstance(v, list) and bool(v) and all(_non_negative_int(s) for s in v))
        _check("ladder.widen_factor", self.widen_factor, "a number above 1",
               lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v > 1)
        if self.lr != "given" and self.name is None:
            raise ValueError(f"ladder.lr={self.lr} reads the ladder's runs: set ladder.name= too "
                             f"(e.g. experiment=ladder)")


@dataclass
class LoggerSection:
    """Where metrics go besides the run directory (which always gets metrics.csv and summary.json).

    ``configs/logger/``: ``tensorboard`` (the default), ``wandb``, ``mlflow`` (Lightning's
    own loggers; the last two need ``pip install -e ".[wandb]"`` / ``".[mlflow]"``).
    """

    name: str = "tensorboard"
    project: Optional[str] = None  # W&B project / MLflow experiment; None: experiment_name
    run_name: Optional[str] = None  # None: <variant>/seed<k>
    save_dir: Optional[str] = None  # W&B's local files; None: the run directory
    offline: bool = False  # W&B: log locally only (upload later with `wandb sync`)
    entity: Optional[str] = None  # W&B team or user; None: your default
    tracking_uri: Optional[str] = None  # MLflow; None: $MLFLOW_TRACKING_URI, else file:./mlruns
    options: dict[str, Any] = field(default_factory=dict)  # more keyword arguments for the logger

    def validate(self) -> None:
        _check_choice("logger.name", self.name, LOGGERS)


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
    logger: LoggerSection = field(default_factory=LoggerSection)
    budget: BudgetSection = field(default_factory=BudgetSection)
    ladder: LadderSection = field(default_factory=LadderSection)
    # Option values per variant name, applied under the command line's variant.options when
    # that variant is selected (an experiment that sweeps every variant pins their conventions).
    variant_defaults: dict[str, dict[str, Any]] = field(default_factory=dict)

    def validate(self) -> None:
        """Fail fast, naming the bad value and what is allowed."""
        if self.model.preset not in PRESETS:
            raise ValueError(f"unknown model preset {self.model.preset!r}; available: "
                             f"{', '.join(sorted(PRESETS))}")
        # The variant, its options, the model shape and the kernel, before any data is read
        # (the preset's vocabulary stands in for the tokenizer's).
        for name, values in self.variant_defaults.items():
            try:
                parse_options(get_variant(name), dict(values))
            except ValueError as err:
                raise ValueError(f"variant_defaults.{name}: {err}") from None
        self.model.build(self.variant, PRESETS[self.model.preset]["vocab_size"], self.trainer.seq_len)
        _check("seed", self.seed, f"an integer in [0, {MAX_SEED}]", lambda v: _int(v) and 0 <= v <= MAX_SEED)
        self.trainer.validate()
        self.optim.validate()
        self.logger.validate()
        self.budget.validate()
        self.ladder.validate()
        if self.ladder.lr == "tuned" and self.seed in self.ladder.selection_seeds:
            raise ValueError(f"seed={self.seed} is one of ladder.selection_seeds={self.ladder.selection_seeds}, "
                             f"which chose the learning rate: a ladder.lr=tuned run must use another seed")
        widening = self.ladder.lr in ("lower", "higher")
        if widening and not self.trainer.one_process():
            # Each process reads the runs on disk; a sibling job finishing between two reads could
            # give the processes of one run different rates.
            raise ValueError(f"ladder.lr={self.ladder.lr} decides its rate from the runs on disk in every process: "
                             f"run it on one device (trainer.devices=1 trainer.num_nodes=1, got "
                             f"{self.trainer.devices!r} and {self.trainer.num_nodes!r}); several at once with "
                             f"hydra/launcher=joblib")
        if widening and self.seed not in self.ladder.selection_seeds:
            raise ValueError(f"ladder.lr={self.ladder.lr} widens the learning-rate grid on the selection seeds: "
                             f"seed={self.seed} is not one of ladder.selection_seeds={self.ladder.selection_seeds}")
        if not isinstance(self.experiment_name, str) or not self.experiment_name or "/" in self.experiment_name:
            raise ValueError(f"experiment_name must be a non-empty name without '/', "
                             f"got {self.experiment_name!r}")
        _check("results_dir", self.results_dir, "a non-empty path", lambda v: isinstance(v, str) and v != "")
        _check("resume", self.resume, "null, 'auto' or the path of a .ckpt file",
               lambda v: v is None or (isinstance(v, str) and v != ""))


def _check(name: str, value: Any, allowed: str, ok: Callable[[Any], bool]) -> None:
    if not ok(value):
        raise ValueError(f"{name} must be {allowed}, got {value!r}")


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _positive_int(v: Any) -> bool:
    return _int(v) and v > 0


def _non_negative_int(v: Any) -> bool:
    return _int(v) and v >= 0


def _positive(v: Any) -> bool:
    return _number(v) and 0 < v < math.inf  # NaN fails every comparison


def _non_negative(v: Any) -> bool:
    return _number(v) and 0 <= v < math.inf


def _unit(v: Any) -> bool:
    return _number(v) and 0 <= v <= 1


def _beta(v: Any) -> bool:
    return _number(v) and 0 <= v < 1


def _check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; allowed: {', '.join(allowed)}")


def _valid_devices(value: Any) -> bool:
    """Lightning's ``devices``: a count, -1 (all), "auto", "0,1"/"2" strings, or a list of indices."""
    if isinstance(value, str):
        if value in ("auto", "-1") or re.fullmatch(r"\d+(,\d+)*,", value) or re.fullmatch(r"\d+(,\d+)+", value):
            return True  # "0," and "0,1" are device indices
        return value.isdigit() and int(value) > 0  # a count
    if isinstance(value, (list, tuple)):
        return bool(value) and all(_non_negative_int(v) for v in value) and len(set(value)) == len(value)
    return _positive_int(value) or value == -1


_stored_variants: dict[str, dict[str, str]] | None = None  # what register_schema last stored


def register_schema() -> None:
    """Make ``TrainConfig`` the schema ``configs/train.yaml`` composes into (``train_schema``),
    and derive the ``variant`` group from the registry: one entry per variant, holding its
    name and its options' defaults, each overridden by ``variant_defaults.<name>.<option>``
    where the config sets one."""
    global _stored_variants
    wanted = {name: {key: f"${{oc.select:variant_defaults.{name}.{key},{_grammar_literal(default)}}}"
                     for key, (_, default) in option_fields(get_variant(name)).items()}
              for name in available_variants()}
    # Storing costs ~0.1 s (OmegaConf builds each node); tests compose hundreds of configs.
    # Keyed on the registry's contents, so a variant registered since is still stored.
    if wanted == _stored_variants:
        return
    store = ConfigStore.instance()
    store.store(name="train_schema", node=TrainConfig)
    for gone in set(_stored_variants or {}) - set(wanted):  # unregistered since: out of variant=glob(*) too
        store.repo.get("variant", {}).pop(f"{gone}.yaml", None)
    for name, options in wanted.items():
        node = OmegaConf.create({"name": name, "options": options})
        # Open to unknown keys, so that a misspelt option reaches parse_options, whose error
        # lists the allowed ones, instead of Hydra's "Key ... is not in struct".
        OmegaConf.set_struct(node.options, False)
        store.store(group="variant", name=name, node=node)
    _stored_variants = wanted


def _grammar_literal(value: Any) -> str:
    """An option's default as OmegaConf's interpolation grammar reads it back."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, str):
        return f"'{value}'"
    return repr(value)

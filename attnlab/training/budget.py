"""A training run's length from a token budget: ``budget.tokens_per_param`` x parameters.

The parameters are those of the ``baseline`` block at the run's shape (``budget.count``:
non-embedding, or total), so every variant of a rung trains on the same tokens in the same
order; warm-up and validations scale with the number of steps. A budget beyond the training
split is refused unless ``budget.repeat_data=true``, which repeats it and says how often.
"""

from __future__ import annotations

import logging
import math

from attnlab.config import ModelConfig
from attnlab.params import baseline_twin, parameter_breakdown
from attnlab.training.config import TrainConfig

log = logging.getLogger(__name__)


def budget_parameters(model_config: ModelConfig, count: str) -> int:
    """Baseline's parameters at this shape: ``non_embedding`` leaves out wte and lm_head."""
    parts = parameter_breakdown(baseline_twin(model_config))
    return parts["total"] if count == "total" else parts["total"] - parts["embedding"] - parts["head"]


def apply_budget(cfg: TrainConfig, model_config: ModelConfig, train_tokens: int | None) -> None:
    """Set steps, warm-up and validation cadence from ``cfg.budget`` (nothing when it is off).
    ``train_tokens``: the training split's size (None for generated tasks, which never repeat)."""
    budget, t = cfg.budget, cfg.trainer
    if budget.tokens_per_param is None:
        return
    params = budget_parameters(model_config, budget.count)
    tokens_per_step = t.batch_size * t.seq_len * t.accumulate_grad_batches
    steps = max(1, math.ceil(budget.tokens_per_param * params / tokens_per_step))
    # Rounded up to whole validation intervals, so that the last validation is at the last step.
    t.val_every_n_steps = math.ceil(steps / budget.validations)
    t.max_steps = t.val_every_n_steps * budget.validations
    tokens = t.max_steps * tokens_per_step
    cfg.optim.warmup_steps = round(budget.warmup_fraction * t.max_steps)
    wanted = budget.tokens_per_param * params
    message = (f"budget: {budget.tokens_per_param:g} tokens x {params:,} {budget.count} parameters = "
               f"{wanted:,.0f} tokens, {t.max_steps:,} steps of {tokens_per_step:,} tokens ({tokens:,} tokens, "
               f"{tokens / params:.3g} per parameter: whole steps, rounded up to {budget.validations} "
               f"validation intervals)")
    if train_tokens is not None and tokens > train_tokens:
        epochs = tokens / train_tokens
        if not budget.repeat_data:
            raise ValueError(f"{message} exceeds the {train_tokens:,}-token training split ({epochs:.2f} epochs); "
                             f"pass budget.repeat_data=true to repeat it, or lower budget.tokens_per_param "
                             f"(at most {train_tokens / params:.3g} for one pass)")
        message += f", {epochs:.2f} passes over the {train_tokens:,}-token training split"
    log.info(message)

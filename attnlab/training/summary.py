"""The part of summary.json known before training: what was trained, on what, with which code."""

from __future__ import annotations

from typing import Any

import torch

from attnlab.config import ModelConfig
from attnlab.data import PreparedData
from attnlab.data.stats import unigram_entropy_nats
from attnlab.flops import flops_per_token
from attnlab.params import parameter_breakdown
from attnlab.provenance import git_commit, versions
from attnlab.training.config import TrainConfig
from attnlab.training.hardware import device_name


def static_summary(cfg: TrainConfig, model_config: ModelConfig, prepared: PreparedData,
                   precision: str) -> dict[str, Any]:
    """What ``SummaryCallback`` writes beside the numbers measured by training."""
    return {
        "experiment": cfg.experiment_name,
        "variant": cfg.variant.name,
        "seed": cfg.seed,
        "preset": model_config.name,
        "parameters": parameter_breakdown(model_config),
        # Whether the MLP width was adjusted to baseline's parameter count (model.match_params).
        "params_matched": model_config.matched_intermediate_size is not None,
        "mlp_hidden_size": model_config.mlp_hidden_size,
        "flops_per_token": flops_per_token(model_config, cfg.trainer.seq_len),
        "seq_len": cfg.trainer.seq_len,
        "batch_size": cfg.trainer.batch_size,
        "accumulate_grad_batches": cfg.trainer.accumulate_grad_batches,
        "max_steps": cfg.trainer.max_steps,
        "val_batches": cfg.trainer.val_batches,  # what final_val_loss averages over
        "lr": cfg.optim.lr,
        # A synthetic task's source names its options: runs of other settings are not compared (tables).
        "data": {"source": prepared.source if prepared.task else cfg.data.source,
                 "tokenizer_sha256": prepared.tokenizer_sha256,
                 "tokenizer_vocab_size": prepared.vocab_size, "train_tokens": prepared.train_tokens,
                 "val_tokens": prepared.val_tokens,
                 # A synthetic task has no corpus: its options and chance accuracy instead.
                 "val_unigram_entropy_nats": None if prepared.task else round(unigram_entropy_nats(prepared.val), 4),
                 **({"task": prepared.task.settings()} if prepared.task else {})},
        "device": device_name(),
        "precision": precision,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),  # TF32 allowed or not
        "versions": versions(),
        "git_commit": git_commit(),
    }

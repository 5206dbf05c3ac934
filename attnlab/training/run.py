"""``train(cfg)``: one training run from a typed config to a complete run directory."""

from __future__ import annotations

import dataclasses
import logging
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
import yaml
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

from attnlab.attention import FLEX_CPU_LIMIT
from attnlab.checkpoint import check_checkpoint_matches, checkpoint_step  # noqa: F401 (re-exported)
from attnlab.config import ModelConfig
from attnlab.data import PreparedData, ShardIndex, check_vocab_fits, prepare_data
from attnlab.flops import device_peak_flops, flops_per_token
from attnlab.model import build_model
from attnlab.params import parameter_breakdown
from attnlab.runs import RunDir
from attnlab.training.callbacks import (GracefulStop, LastCheckpoint, PeakFlopsThroughputMonitor,
                                        SummaryCallback, TrainingInterrupted)  # noqa: F401 (re-exported)
from attnlab.atomic import remove_partial_writes
from attnlab.training.checkpoint_io import AtomicCheckpointIO
from attnlab.training.config import TrainConfig
from attnlab.training.csv_logger import RunCSVLogger
from attnlab.training.datamodule import TokenDataModule
from attnlab.training.module import LanguageModelModule

log = logging.getLogger(__name__)


def train(cfg: TrainConfig, extra_callbacks: list[L.Callback] | None = None) -> RunDir:
    """Train one run; ``extra_callbacks`` are added to the Trainer's (e.g. from notebooks)."""
    cfg.validate()
    _check_kernel_can_train(cfg.model.attn_kernel, _accelerator(cfg))
    run = RunDir.for_run(cfg.results_dir, cfg.experiment_name, cfg.variant.name, cfg.seed)
    # DDP workers started by Lightning (or torchrun) re-run this function: only rank 0
    # claims and writes the run directory.
    is_rank_zero = rank_zero_only.rank == 0
    ckpt_path = _claim_run_dir(run, cfg) if is_rank_zero else _resume_checkpoint(run, cfg)

    prepared = prepare_data(cfg.data)
    model_config = cfg.model.build(cfg.variant, prepared.vocab_size)
    check_vocab_fits(prepared.vocab_size, model_config.vocab_size)
    if cfg.trainer.seq_len > model_config.block_size:
        raise ValueError(f"trainer.seq_len={cfg.trainer.seq_len} exceeds model.block_size="
                         f"{model_config.block_size} of preset {model_config.name!r}; use "
                         f"trainer.seq_len<={model_config.block_size} or a larger model.block_size")
    if ckpt_path is not None:
        check_checkpoint_matches(ckpt_path, model_config)
        if is_rank_zero:
            _trim_metrics(run, checkpoint_step(ckpt_path))

    L.seed_everything(cfg.seed, workers=True)
    model = build_model(model_config, seed=cfg.seed)
    accelerator = _accelerator(cfg)
    precision = _precision(cfg, accelerator)
    if cfg.trainer.compile if cfg.trainer.compile is not None else accelerator == "gpu":
        model.compile()  # in place, so checkpoint keys stay those of the plain model

    t = cfg.trainer
    tokens_per_batch = t.batch_size * t.seq_len
    module = LanguageModelModule(model, cfg.optim, t.max_steps,
                                 flops_per_batch=flops_per_token(model_config, t.seq_len) * tokens_per_batch,
                                 nonfinite_loss=t.nonfinite_loss)
    datamodule = TokenDataModule(prepared, t.seq_len, t.batch_size, cfg.seed, t.num_workers)

    if is_rank_zero:
        run.path.mkdir(parents=True, exist_ok=True)
        _write_run_files(run, cfg, model_config, prepared)
    summary = SummaryCallback(run.summary, _static_summary(cfg, model_config, prepared, precision))
    callbacks = [
        summary,
        ModelCheckpoint(dirpath=run.checkpoints, filename="best", monitor="val/loss", mode="min",
                        save_top_k=1, enable_version_counter=False),
        # last.ckpt, the resume point (also written on SIGINT/SIGTERM by GracefulStop).
        # AtomicCheckpointIO renames a complete file into place, so a kill during a save
        # leaves the previous last.ckpt intact.
        LastCheckpoint(run.last_checkpoint, t.checkpoint_every_n_steps or t.val_every_n_steps),
        LearningRateMonitor(logging_interval="step"),
        PeakFlopsThroughputMonitor(
            peak_flops=t.peak_flops or device_peak_flops(_root_device(accelerator), precision),
            batch_size_fn=lambda batch: batch[0].shape[0],
            length_fn=lambda batch: batch[0].numel(), window_size=max(2, min(50, t.log_every_n_steps))),
    ]
    callbacks += extra_callbacks or []
    if t.progress_bar:
        callbacks.append(TQDMProgressBar(refresh_rate=max(1, t.log_every_n_steps // 2)))
    # Last, so that it sees a signal raised during the step's other hooks.
    callbacks.append(GracefulStop(run.last_checkpoint))
    trainer = L.Trainer(
        accelerator=accelerator, devices=t.devices, num_nodes=t.num_nodes, strategy=t.strategy,
        precision=precision, max_steps=t.max_steps, accumulate_grad_batches=t.accumulate_grad_batches,
        gradient_clip_val=cfg.optim.grad_clip or None,
        val_check_interval=t.val_every_n_steps * t.accumulate_grad_batches,  # counted in batches
        check_val_every_n_epoch=None, limit_val_batches=t.val_batches,
        log_every_n_steps=t.log_every_n_steps, enable_progress_bar=t.progress_bar,
        logger=[TensorBoardLogger(run.path, name="tensorboard", version=""),
                RunCSVLogger(run.path, name="", version="")],
        callbacks=callbacks, default_root_dir=run.path, deterministic=accelerator == "cpu",
        num_sanity_val_steps=0, plugins=[AtomicCheckpointIO()],
        use_distributed_sampler=False,  # EpochPermutationSampler shards by rank itself
    )
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(ckpt_path) if ckpt_path else None)
    return run


def _claim_run_dir(run: RunDir, cfg: TrainConfig) -> Path | None:
    """Decide what happens to an existing run directory; return the checkpoint to resume from."""
    _check_writable(Path(cfg.results_dir))
    if cfg.resume:
        ckpt = _resume_checkpoint(run, cfg)
        for directory in (run.path, run.checkpoints):  # left by a process killed while writing
            remove_partial_writes(directory)
        if ckpt is None and run.metrics.is_file():
            # Killed before its first checkpoint: nothing to continue, start again in place.
            run.metrics.unlink()
        return ckpt
    if run.path.exists() and any(run.path.iterdir()):
        if not cfg.overwrite:
            raise FileExistsError(
                f"run directory {run.path} already exists; pass resume=auto to continue it, "
                f"overwrite=true to replace it (the old one is moved aside), or choose another "
                f"experiment=/seed=")
        aside = run.path.with_name(f"{run.path.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
        run.path.rename(aside)
        log.warning("moved the existing run directory aside to %s", aside)
    return None


def _check_writable(directory: Path) -> None:
    """Fail before data preparation and training, not at the first checkpoint an hour later."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as err:
        raise ValueError(f"results_dir={str(directory)!r} is not writable ({err.strerror or err}); "
                         f"pass results_dir=<a writable directory>") from None


def _trim_metrics(run: RunDir, step: int) -> None:
    """Drop rows logged after the checkpoint, which the resumed run will log again."""
    if run.metrics.is_file():
        frame = pd.read_csv(run.metrics)
        frame[frame["step"] < step].to_csv(run.metrics, index=False)


def _resume_checkpoint(run: RunDir, cfg: TrainConfig) -> Path | None:
    """``resume=auto``: the run's last checkpoint, or None (a fresh start) when it has none
    yet, so that one command can be requeued after any preemption. An explicit path must exist."""
    if not cfg.resume:
        return None
    if cfg.resume == "auto":
        if run.last_checkpoint.is_file():
            return run.last_checkpoint
        log.warning("resume=auto: no checkpoint at %s yet; starting the run from step 0",
                    run.last_checkpoint)
        return None
    ckpt = Path(cfg.resume)
    if not ckpt.is_file():
        raise FileNotFoundError(f"resume={cfg.resume!r}: no checkpoint file at {ckpt}; use "
                                f"resume=auto or the path of an existing .ckpt")
    return ckpt


def _check_kernel_can_train(kernel: str, accelerator: str) -> None:
    if kernel == "flex" and accelerator != "gpu":
        raise ValueError(f"model.attn_kernel=flex cannot train on accelerator={accelerator!r}: "
                         f"{FLEX_CPU_LIMIT}")


def _accelerator(cfg: TrainConfig) -> str:
    if cfg.trainer.accelerator != "auto":
        return cfg.trainer.accelerator
    return "gpu" if torch.cuda.is_available() else "cpu"


def _root_device(accelerator: str) -> torch.device:
    return torch.device("cuda" if accelerator == "gpu" else "cpu")


def _precision(cfg: TrainConfig, accelerator: str) -> str:
    if cfg.trainer.precision != "auto":
        return cfg.trainer.precision
    if accelerator == "gpu" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


def _write_run_files(run: RunDir, cfg: TrainConfig, model_config: ModelConfig,
                     prepared: PreparedData) -> None:
    resolved = {**dataclasses.asdict(cfg), "resolved_model": model_config.to_dict()}
    run.config.write_text(yaml.safe_dump(resolved, sort_keys=False, allow_unicode=True))
    shutil.copyfile(prepared.tokenizer_path, run.tokenizer)


def _static_summary(cfg: TrainConfig, model_config: ModelConfig, prepared: PreparedData,
                    precision: str) -> dict[str, Any]:
    return {
        "experiment": cfg.experiment_name,
        "variant": cfg.variant.name,
        "seed": cfg.seed,
        "preset": model_config.name,
        "parameters": parameter_breakdown(model_config),
        "seq_len": cfg.trainer.seq_len,
        "batch_size": cfg.trainer.batch_size,
        "accumulate_grad_batches": cfg.trainer.accumulate_grad_batches,
        "max_steps": cfg.trainer.max_steps,
        "lr": cfg.optim.lr,
        "data": {"source": cfg.data.source, "tokenizer_sha256": prepared.tokenizer_sha256,
                 "tokenizer_vocab_size": prepared.vocab_size, "train_tokens": prepared.train_tokens,
                 "val_tokens": prepared.val_tokens,
                 "val_unigram_entropy_nats": round(unigram_entropy_nats(prepared.val), 4)},
        "device": _device_name(),
        "precision": precision,
        "versions": {"torch": torch.__version__, "lightning": L.__version__,
                     "python": platform.python_version()},
        "git_commit": _git_commit(),
    }


def unigram_entropy_nats(index_path: Path) -> float:
    """Entropy of the token unigram distribution: the loss of a model that ignores context,
    the bar a trained model must clear."""
    counts = np.bincount(ShardIndex.load(index_path).read_all()).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def _device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True,
                               cwd=Path(__file__).parent, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("+dirty" if dirty else "")

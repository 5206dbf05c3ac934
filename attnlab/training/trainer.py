"""The Lightning ``Trainer`` of a run: its callbacks, loggers and settings from ``trainer.*``."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import Logger
from lightning.pytorch.strategies import ModelParallelStrategy, Strategy

from attnlab.atomic import replace_directory, staging_path
from attnlab.flops import device_peak_flops
from attnlab.runs import RunDir
from attnlab.training.callbacks import (CountedFlopsSummary, Float32MatmulPrecision, GracefulStop, HeadScoresCallback,
                                        LastCheckpoint, PeakFlopsThroughputMonitor, SummaryCallback)
from attnlab.training.checkpoint_io import AtomicCheckpointIO
from attnlab.training.compile_watch import CompileWatch
from attnlab.training.config import TrainConfig
from attnlab.training.hardware import choose_matmul_precision, root_device, should_compile


def build_strategy(name: str) -> str | Strategy:
    """``trainer.strategy``, with ``fsdp`` as FSDP2 (``fully_shard``) under Lightning's
    ``ModelParallelStrategy``: each block sharded on its own (``LanguageModelModule.configure_model``)
    and sharded checkpoints, one file per rank. Lightning's ``FSDPStrategy`` (FSDP1) is not used:
    torch 2.13's FSDP1 needs an accelerator, so it could not be tested on CPU processes."""
    if name != "fsdp":
        return name
    return FullyShardedStrategy(tensor_parallel_size=1, save_distributed_checkpoint=True)


class FullyShardedStrategy(ModelParallelStrategy):
    """``ModelParallelStrategy`` with every rank in one data-parallel (sharding) group (its
    ``"auto"`` would make one group per node and expect tensor parallelism within it), and sharded
    checkpoints written whole beside their place, then swapped in: Lightning writes them into
    the old directory, so a kill during a save would leave one step's shards beside another's
    metadata, and a resume from it would go on from a mixture."""

    def setup_environment(self) -> None:
        self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: str | os.PathLike,
                        storage_options: Any | None = None) -> None:
        path = Path(self.broadcast(filepath))
        staged = staging_path(path)
        if self.global_rank == 0 and staged.exists():  # left by a killed save
            shutil.rmtree(staged)
        self.barrier("staging")
        super().save_checkpoint(checkpoint, staged, storage_options)
        self.barrier("staged")  # every rank's shards written
        if self.global_rank == 0:
            replace_directory(staged, path)
        self.barrier("replaced")


def build_trainer(cfg: TrainConfig, run: RunDir, accelerator: str, precision: str, loggers: list[Logger],
                  summary: SummaryCallback, extra_callbacks: list[L.Callback]) -> L.Trainer:
    """A Trainer writing ``run``'s checkpoints; ``extra_callbacks`` run after the checkpointing
    and monitoring ones, before the progress bar and the signal handler."""
    t = cfg.trainer
    matmul = choose_matmul_precision(t.float32_matmul_precision, accelerator)
    callbacks = [
        *([Float32MatmulPrecision(matmul)] if matmul is not None else []),
        summary,
        CountedFlopsSummary(),  # Lightning's layer table, in place of its default one
        ModelCheckpoint(dirpath=run.checkpoints, filename="best", monitor="val/loss", mode="min",
                        save_top_k=1, enable_version_counter=False),
        # last.ckpt, the resume point (also written on SIGINT/SIGTERM by GracefulStop).
        # AtomicCheckpointIO renames a complete file into place, so a kill during a save
        # leaves the previous last.ckpt intact.
        LastCheckpoint(run.last_checkpoint, t.checkpoint_every_n_steps or t.val_every_n_steps),
        LearningRateMonitor(logging_interval="step"),
        PeakFlopsThroughputMonitor(
            peak_flops=t.peak_flops or device_peak_flops(root_device(accelerator), precision),
            batch_size_fn=lambda batch: batch[0].shape[0],
            length_fn=lambda batch: batch[0].numel(), window_size=max(2, min(50, t.log_every_n_steps))),
        HeadScoresCallback(),  # heads/* at every validation: induction, previous-token, sink scores
        # After the probe above, whose shapes compile too: compile/graphs at every validation.
        *([CompileWatch()] if should_compile(t.compile, accelerator) else []),
        *extra_callbacks,
    ]
    if t.progress_bar:
        callbacks.append(TQDMProgressBar(refresh_rate=max(1, t.log_every_n_steps // 2)))
    # Last, so that it sees a signal raised during the step's other hooks.
    callbacks.append(GracefulStop(run.last_checkpoint))
    return L.Trainer(
        accelerator=accelerator, devices=t.devices, num_nodes=t.num_nodes, strategy=build_strategy(t.strategy),
        precision=precision, max_steps=t.max_steps, accumulate_grad_batches=t.accumulate_grad_batches,
        gradient_clip_val=cfg.optim.grad_clip or None,
        val_check_interval=t.val_every_n_steps * t.accumulate_grad_batches,  # counted in batches
        check_val_every_n_epoch=None, limit_val_batches=t.val_batches,
        log_every_n_steps=t.log_every_n_steps, enable_progress_bar=t.progress_bar, logger=loggers,
        callbacks=callbacks, default_root_dir=run.path, deterministic=accelerator == "cpu",
        num_sanity_val_steps=0, plugins=[AtomicCheckpointIO()],
        use_distributed_sampler=False,  # EpochPermutationSampler shards by rank itself
    )

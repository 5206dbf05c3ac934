"""Callbacks that make a run directory self-describing."""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import time
from pathlib import Path
from typing import Any

import lightning as L
import lightning.pytorch.strategies as pl_strategies
import torch
from lightning.pytorch.callbacks import ModelSummary, ThroughputMonitor
from lightning.pytorch.trainer.states import RunningStage
from lightning.pytorch.utilities.model_summary import ModelSummary as LayerTable

from attnlab.analysis.head_scores import model_head_scores, probe_segment_len, repeated_random_tokens, summarize_heads
from attnlab.atomic import atomic_write

log = logging.getLogger(__name__)


class SummaryCallback(L.Callback):
    """Writes ``summary.json`` when fitting ends: what evaluate.py tabulates."""

    def __init__(self, path: Path, static: dict[str, Any]) -> None:
        self.path = path
        self.static = static
        self.train_seconds = 0.0
        self.best_val_loss = math.inf
        self.last_val_loss = math.nan
        self.last_val_ppl = math.nan
        self.last_val_acc: float | None = None  # runs that log val/acc (synthetic tasks) only
        self._last_train_loss: Any = None  # a tensor, or a float restored from a checkpoint
        self._fit_start = 0.0

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._fit_start = time.perf_counter()

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or "val/loss" not in trainer.callback_metrics:
            return
        self.last_val_loss = float(trainer.callback_metrics["val/loss"])
        self.last_val_ppl = float(trainer.callback_metrics.get("val/ppl", math.nan))
        if "val/acc" in trainer.callback_metrics:
            self.last_val_acc = float(trainer.callback_metrics["val/acc"])
        self.best_val_loss = min(self.best_val_loss, self.last_val_loss)

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        # Kept as a tensor: float() here would wait for the GPU at every step.
        self._last_train_loss = trainer.callback_metrics.get("train/loss", self._last_train_loss)

    @property
    def last_train_loss(self) -> float:
        return math.nan if self._last_train_loss is None else float(self._last_train_loss)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.train_seconds += time.perf_counter() - self._fit_start
        self._fit_start = 0.0
        # An interrupted run has no summary: evaluate.py must not mistake it for a finished one.
        if trainer.global_step >= (trainer.max_steps or 0):
            self.write(trainer, pl_module)

    def write_diverged(self, trainer: L.Trainer, pl_module: L.LightningModule, reason: str) -> None:
        """A summary of a run stopped by a non-finite loss, for a ladder's tuning runs, where that
        is a result about the learning rate (its loss reads as None; ``RunDir.problems`` says why)."""
        self.train_seconds += time.perf_counter() - self._fit_start if self._fit_start else 0.0
        self._fit_start = 0.0
        self.last_val_loss = math.nan
        self.write(trainer, pl_module, diverged=reason)

    def write(self, trainer: L.Trainer, pl_module: L.LightningModule, diverged: str | None = None) -> None:
        if not trainer.is_global_zero:
            return
        tokens = getattr(pl_module, "tokens_seen", 0)
        summary = {
            **self.static,
            "steps": trainer.global_step,
            "world_size": trainer.world_size,  # processes sharing each step: batch_size is per process
            "tokens_seen": tokens,
            "final_train_loss": _finite_or_none(self.last_train_loss),
            "final_val_loss": _finite_or_none(self.last_val_loss),
            "best_val_loss": _finite_or_none(self.best_val_loss),
            "final_val_ppl": _finite_or_none(self.last_val_ppl),
            **({"final_val_acc": self.last_val_acc} if self.last_val_acc is not None else {}),
            "wall_time_s": round(self.train_seconds, 2),
            "tokens_per_s": round(tokens / self.train_seconds, 1) if self.train_seconds else None,
            **({"diverged": diverged} if diverged else {}),
        }
        with atomic_write(self.path, encoding="utf-8") as file:
            file.write(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")

    def state_dict(self) -> dict[str, Any]:
        # Saved in checkpoints, so a resumed run's summary covers the whole run (even one
        # resumed from its final checkpoint, which trains no further step).
        elapsed = time.perf_counter() - self._fit_start if self._fit_start else 0.0
        return {"train_seconds": self.train_seconds + elapsed, "best_val_loss": self.best_val_loss,
                "last_val_loss": self.last_val_loss, "last_val_ppl": self.last_val_ppl,
                "last_val_acc": self.last_val_acc, "last_train_loss": self.last_train_loss}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.train_seconds = state_dict["train_seconds"]
        self.best_val_loss = state_dict["best_val_loss"]
        self.last_val_loss = state_dict["last_val_loss"]
        self.last_val_ppl = state_dict.get("last_val_ppl", math.nan)
        self.last_val_acc = state_dict.get("last_val_acc")
        self._last_train_loss = state_dict.get("last_train_loss")


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


class Float32MatmulPrecision(L.Callback):
    """torch's fp32 matmul precision in every process that trains: ``train`` sets it in its own
    before the Trainer exists, and a spawned worker (``trainer.strategy=ddp_spawn``) starts
    without it."""

    def __init__(self, precision: str) -> None:
        self.precision = precision

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        torch.set_float32_matmul_precision(self.precision)


class PeakFlopsThroughputMonitor(ThroughputMonitor):
    """Lightning's throughput monitor with the device peak from attnlab's own table (for MFU), and
    its training counts kept in checkpoints: a resumed run's ``train/batches``, ``train/samples`` and
    ``train/time`` go on from the checkpoint's rather than restart at 0."""

    def __init__(self, peak_flops: float | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.peak_flops = peak_flops
        self._resumed: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        stage = RunningStage.TRAINING
        throughput = self._throughputs.get(stage)
        times = throughput._time if throughput is not None else []
        return {"batches": self._batches.get(stage, 0), "samples": self._samples.get(stage, 0),
                "lengths": self._lengths.get(stage, 0), "time": times[-1] if times else 0.0}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._resumed = dict(state_dict)

    def on_train_start(self, trainer: L.Trainer, *args: Any) -> None:
        super().on_train_start(trainer, *args)
        if self._resumed is not None and trainer.is_global_zero:  # the counts live on rank 0
            stage = RunningStage.TRAINING
            self._batches[stage] = self._resumed["batches"]
            self._samples[stage] = self._resumed["samples"]
            self._lengths[stage] = self._resumed["lengths"]
            self._t0s[stage] -= self._resumed["time"]  # elapsed time goes on from the checkpoint's
            self._resumed = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if self.peak_flops:
            # Each stage's Throughput took Lightning's own peak (None on a CPU or an unlisted GPU)
            # when it was made above, and computes MFU from it: set it there, not only here.
            self.available_flops = int(self.peak_flops)
            for throughput in self._throughputs.values():
                throughput.available_flops = self.available_flops


class CountedFlopsSummary(ModelSummary):
    """Lightning's table of layers and parameters at the start of fitting, with its "Total Flops"
    line counted by ``attnlab.flops`` rather than left at 0: Lightning counts a forward pass of
    ``example_input_array``, which attnlab does not set (that forward would run the model, and
    compile it, for one more shape before training). The count is one forward pass over a training
    micro-batch of one device: a third of ``flops_per_batch``."""

    def _summary(self, trainer: L.Trainer, pl_module: L.LightningModule) -> LayerTable:
        return _LayerTableWithFlops(pl_module, self._max_depth)


class _LayerTableWithFlops(LayerTable):
    @property
    def total_flops(self) -> int:
        train_flops = getattr(self._model, "train_flops_per_batch", None)
        return 0 if train_flops is None else round(train_flops / 3)


class LastCheckpoint(L.Callback):
    """``last.ckpt``, the resume point: every N optimizer steps, and after each validation.

    Lightning's step-triggered ``ModelCheckpoint`` saves at the end of the batch, before the
    validation that the same step runs; a run resumed from that file would skip the
    validation (at the final step: finish without it). A step that validates is therefore
    saved after validating.
    """

    def __init__(self, path: Path, every_n_steps: int) -> None:
        self.path = path
        self.every_n_steps = every_n_steps
        self.saved_step: int | None = None

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        step = trainer.global_step
        if step == 0 or step == self.saved_step or step % self.every_n_steps:
            return
        if (trainer.fit_loop.epoch_loop.total_batch_idx + 1) % trainer.val_check_batch == 0:
            return  # validation follows this batch; on_validation_end saves
        self.save(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.save(trainer)

    def save(self, trainer: L.Trainer) -> None:
        # Full state (optimizer, loops): resume must be exact.
        trainer.save_checkpoint(self.path, weights_only=False)
        self.saved_step = trainer.global_step


# Strategies whose parameters are sharded across ranks: one rank alone cannot run the model.
SHARDED_STRATEGIES = tuple(getattr(pl_strategies, name) for name in
                           ("FSDPStrategy", "DeepSpeedStrategy", "ModelParallelStrategy")
                           if hasattr(pl_strategies, name))


class HeadScoresCallback(L.Callback):
    """At every validation, ``heads/<summary>`` (``attnlab.analysis.head_scores.SUMMARIES``:
    ``induction_max``, ``induction_mean``, ``prev_token_max``, ``sink_mean``, ``entropy_norm_mean``,
    over every layer and head) on a fixed probe batch, logged to every logger (TensorBoard,
    metrics.csv) beside ``val/loss``: when the induction heads form, per variant.

    The probe: ``n_sequences`` times ``<s>`` + a segment of ``segment_len`` distinct random
    non-special token ids + the same segment again (shortened to fit the model's block_size),
    drawn once from a private generator, so the training RNG stream, and hence the run, is
    the same with or without this callback. Rank zero only, under no_grad in eval mode, through
    ``model.attention_probs`` (the explicit kernel); skipped, with a warning, under strategies
    that shard the parameters (FSDP, DeepSpeed), where one rank cannot run the model alone.
    """

    def __init__(self, n_sequences: int = 4, segment_len: int = 32, seed: int = 0) -> None:
        self.n_sequences = n_sequences
        self.segment_len = segment_len
        self.seed = seed
        self._probe: tuple[Any, int] | None = None  # (tokens, segment length) once built
        self._disabled: str | None = None

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self._disabled is not None or not trainer.is_global_zero:
            return
        if isinstance(trainer.strategy, SHARDED_STRATEGIES):
            self._disable(f"strategy {type(trainer.strategy).__name__} shards the model")
            return
        model = pl_module.model
        if self._probe is None:
            vocab = model.config.vocab_size
            try:
                length = probe_segment_len(self.segment_len, model.config.block_size, vocab)
            except ValueError as err:
                self._disable(str(err))
                return
            self._probe = repeated_random_tokens(self.n_sequences, length, vocab, self.seed), length
        tokens, length = self._probe
        was_training = model.training
        model.eval()
        try:
            layers = model_head_scores(model, tokens, length)
        finally:
            model.train(was_training)
        for name, value in summarize_heads(layers).items():
            pl_module.log(f"heads/{name}", value, rank_zero_only=True)

    def _disable(self, reason: str) -> None:
        self._disabled = reason
        log.warning("head scores (heads/* metrics) are not computed in this run: %s", reason)


class TrainingInterrupted(RuntimeError):
    """A run stopped by a signal after saving its last checkpoint."""


def time_limit_signal() -> int | None:
    """The signal by which submitit (hydra/launcher=slurm) is told of a job's time limit
    (``SUBMITIT_PREEMPT_SIGNAL``, USR2 by default). Its handler requeues the job and ends the
    process at once: the steps since the last checkpoint would be lost."""
    return getattr(signal, f"SIG{os.environ.get('SUBMITIT_PREEMPT_SIGNAL', 'USR2')}", None)


# SIGTERMs a joblib worker received while its run was not in GracefulStop's hands (being set up, or
# torn down): see ``record_stop_requests``.
_stop_requests: list[int] = []


def record_stop_requests() -> None:
    """In a joblib worker, before its run: catch SIGTERM from now on and record it (``stop_requested``),
    until the default is put back or ``GracefulStop`` takes it up. One sent while the run is set up is not
    lost (``GracefulStop`` takes it up at the first step; Lightning's own handler, set before that,
    only notes it), and the worker shows as busy to the sweep's other processes until it has saved
    and its loggers have finished (``attnlab/training/sweep_stop.py``)."""
    _stop_requests.clear()
    signal.signal(signal.SIGTERM, lambda signum, frame: _stop_requests.append(signum))


def stop_requested() -> bool:
    return bool(_stop_requests)


class GracefulStop(L.Callback):
    """On SIGINT/SIGTERM (Ctrl-C, a Slurm preemption) finish the current optimizer step,
    save ``last.ckpt`` and stop, so that ``resume=auto`` continues exactly there. On submitit's
    time-limit signal (``time_limit_signal``), where a handler of its own is set, the same, and
    then that handler runs (it requeues the job, whose ``resume=auto`` continues from the checkpoint).

    The checkpoint is written at the end of the step's batch, where Lightning's own
    step checkpoints are; the run stops by raising just before the next batch, once the
    step is logged (and its scheduled validation, if any, has run). ``trainer.should_stop``
    is not used: it would add an unscheduled validation, time a preempted job may not have.
    With several processes the ranks agree after every optimizer step (one all-reduce of a flag)
    on whether any of them was signalled, so that they all save at the same step. A SIGTERM that
    came before its handler was set (Lightning's own noted it, or ``record_stop_requests`` did while
    a joblib worker set the run up) is taken up here too: the first step is saved and the run stops.
    """

    def __init__(self, last_checkpoint: Path) -> None:
        self.last_checkpoint = last_checkpoint
        self.received: int | None = None
        self.saved_step: int | None = None
        self._previous: dict[int, Any] = {}
        self.time_limit: int | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.received_sigterm or stop_requested():  # while the run was set up: save at the first step
            self.received = signal.SIGTERM
            _stop_requests.clear()  # taken up: the worker's next run starts without it
            # Lightning's handler noted it too, and would end the run after that step without a checkpoint.
            trainer._signal_connector.received_sigterm = False
        self.time_limit = time_limit_signal()
        chained = self.time_limit is not None and callable(signal.getsignal(self.time_limit))
        # dict: once each, as SUBMITIT_PREEMPT_SIGNAL=TERM names SIGTERM twice
        for signum in dict.fromkeys((signal.SIGINT, signal.SIGTERM, *([self.time_limit] if chained else []))):
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread: leave signals to the launcher
                return

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = signum

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        # Mid-accumulation the partial gradients would be lost: wait for the optimizer step.
        if self.saved_step is not None or trainer.fit_loop.epoch_loop._should_accumulate():
            return
        received = self.received is not None
        if trainer.world_size > 1:
            # A scheduler's signal reaches the ranks at different steps (or one rank only), and the
            # checkpoint save is collective: every rank stops at the first step any rank saw one.
            received = trainer.strategy.reduce_boolean_decision(received, all=False)
            if received and self.received is None:
                self.received = signal.SIGTERM  # another rank's: named as a preemption
        if not received:
            return
        trainer.save_checkpoint(self.last_checkpoint, weights_only=False)
        self.saved_step = trainer.global_step

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        if self.saved_step is not None:
            launcher = self._previous.get(self.received) if self.received == self.time_limit else None
            if launcher is not None:
                log.info("%s saved at step %d; handing %s to the launcher", self.last_checkpoint,
                         self.saved_step, signal.Signals(self.received).name)
                self._restore_handlers()
                launcher(self.received, None)  # submitit: requeue the job and exit
            raise TrainingInterrupted(
                f"training stopped by {signal.Signals(self.received).name} at step {self.saved_step}; "
                f"checkpoint {self.last_checkpoint}; continue with resume=auto")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore_handlers()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore_handlers()

    def _restore_handlers(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

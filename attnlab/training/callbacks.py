"""Callbacks that make a run directory self-describing."""

from __future__ import annotations

import json
import logging
import math
import signal
import time
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ThroughputMonitor


class SummaryCallback(L.Callback):
    """Writes ``summary.json`` when fitting ends: what evaluate.py tabulates."""

    def __init__(self, path: Path, static: dict[str, Any]) -> None:
        self.path = path
        self.static = static
        self.train_seconds = 0.0
        self.best_val_loss = math.inf
        self.last_val_loss = math.nan
        self._fit_start = 0.0

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._fit_start = time.perf_counter()

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or "val/loss" not in trainer.callback_metrics:
            return
        self.last_val_loss = float(trainer.callback_metrics["val/loss"])
        self.best_val_loss = min(self.best_val_loss, self.last_val_loss)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.train_seconds += time.perf_counter() - self._fit_start
        self._fit_start = 0.0
        # An interrupted run has no summary: evaluate.py must not mistake it for a finished one.
        if not trainer.is_global_zero or trainer.global_step < (trainer.max_steps or 0):
            return
        metrics = trainer.callback_metrics
        tokens = getattr(pl_module, "tokens_seen", 0)
        summary = {
            **self.static,
            "steps": trainer.global_step,
            "tokens_seen": tokens,
            "final_train_loss": float(metrics["train/loss"]) if "train/loss" in metrics else None,
            "final_val_loss": _finite_or_none(self.last_val_loss),
            "best_val_loss": _finite_or_none(self.best_val_loss),
            "final_val_ppl": float(metrics["val/ppl"]) if "val/ppl" in metrics else None,
            "wall_time_s": round(self.train_seconds, 2),
            "tokens_per_s": round(tokens / self.train_seconds, 1) if self.train_seconds else None,
        }
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
        tmp.replace(self.path)

    def state_dict(self) -> dict[str, Any]:
        # Saved in checkpoints, so a resumed run's summary covers the whole run.
        elapsed = time.perf_counter() - self._fit_start if self._fit_start else 0.0
        return {"train_seconds": self.train_seconds + elapsed, "best_val_loss": self.best_val_loss,
                "last_val_loss": self.last_val_loss}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.train_seconds = state_dict["train_seconds"]
        self.best_val_loss = state_dict["best_val_loss"]
        self.last_val_loss = state_dict["last_val_loss"]


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


class PeakFlopsThroughputMonitor(ThroughputMonitor):
    """Lightning's throughput monitor with the device peak from attnlab's own table (for MFU)."""

    def __init__(self, peak_flops: float | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.peak_flops = peak_flops

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if self.peak_flops:
            self.available_flops = int(self.peak_flops)


log = logging.getLogger(__name__)


class GracefulStop(L.Callback):
    """On SIGINT/SIGTERM (Ctrl-C, a Slurm preemption) finish the current step, save
    ``last.ckpt`` and stop, so that ``resume=auto`` continues exactly where it ended.

    The save happens at a step boundary, where Lightning expects checkpoints, and
    goes through Lightning's writer (a temporary file renamed into place).
    """

    def __init__(self, last_checkpoint: Path) -> None:
        self.last_checkpoint = last_checkpoint
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread: leave signals to the launcher
                return

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = signum

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if self.received is None:
            return
        trainer.save_checkpoint(self.last_checkpoint)
        trainer.should_stop = True
        log.warning("received %s: saved %s at step %d; continue with resume=auto",
                    signal.Signals(self.received).name, self.last_checkpoint, trainer.global_step)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

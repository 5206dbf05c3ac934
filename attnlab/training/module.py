"""A thin LightningModule around an injected ``GPT``, shared by every variant."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import GradClipAlgorithmType
from torch import Tensor
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy
from torchmetrics.text import Perplexity

from attnlab.checkpoint import checkpoint_step
from attnlab.data.synthetic import IGNORE_INDEX
from attnlab.model import GPT, parameters_without_gradient
from attnlab.training.callbacks import LastCheckpoint
from attnlab.training.config import NONFINITE_POLICIES, OptimConfig

log = logging.getLogger(__name__)
MAX_CONSECUTIVE_SKIPS = 10  # a run that keeps producing NaN/Inf has diverged: stop it


class CosineToFloor(torch.optim.lr_scheduler.CosineAnnealingLR):
    """Cosine decay to ``eta_min`` over ``T_max`` steps, then ``eta_min`` for good. torch's cosine
    rises again past ``T_max``; a finished run resumed with a larger ``trainer.max_steps`` goes
    past it (its ``T_max`` comes back from the checkpoint), and trains on at the floor. Up to
    ``T_max`` it is torch's, step for step."""

    def get_lr(self) -> list[float]:
        if self.last_epoch > self.T_max:
            return [self.eta_min for _ in self.optimizer.param_groups]
        return super().get_lr()


class NonFiniteLossError(FloatingPointError):
    """Training or validation loss became NaN/Inf; no checkpoint was written from that state."""


class UntrainedParametersError(RuntimeError):
    """Parameters got no gradient at the first optimizer step: the run would never train them."""


class LanguageModelModule(L.LightningModule):
    def __init__(self, model: GPT, optim: OptimConfig, max_steps: int,
                 flops_per_batch: float | None = None, nonfinite_loss: str = "stop",
                 log_accuracy: bool = False) -> None:
        super().__init__()
        if nonfinite_loss not in NONFINITE_POLICIES:
            raise ValueError(f"unknown nonfinite_loss policy {nonfinite_loss!r}; allowed: "
                             f"{', '.join(NONFINITE_POLICIES)}")
        self.nonfinite_loss = nonfinite_loss
        self.skipped_batches = 0
        self._consecutive_skips = 0
        self.model = model
        self.optim = optim
        self.max_steps = max_steps
        self.train_flops_per_batch = flops_per_batch
        # Checkpoints carry the model's settings so evaluate/resume can rebuild and check them.
        self.save_hyperparameters({"model_config": model.config.to_dict(),
                                   "optim": dataclasses.asdict(optim), "max_steps": max_steps})
        self.val_loss = MeanMetric()
        self.val_ppl = Perplexity(ignore_index=IGNORE_INDEX)
        # train/acc, val/acc: argmax accuracy on the scored targets (a synthetic task's answers).
        self.log_accuracy = log_accuracy
        if log_accuracy:
            self.train_acc, self.val_acc = (
                MulticlassAccuracy(model.config.padded_vocab_size, average="micro", ignore_index=IGNORE_INDEX,
                                   validate_args=False) for _ in range(2))
        self.tokens_seen = 0
        self._gradients_checked = False

    def configure_model(self) -> None:
        """Under ``trainer=fsdp`` (``ModelParallelStrategy``): shard every block on its own, then
        the rest, over the data-parallel ranks; with bf16-mixed, FSDP gathers the weights in bf16
        and reduces the gradients in fp32."""
        from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

        mesh = getattr(self, "device_mesh", None)
        if mesh is None or isinstance(self.model, FSDPModule):  # not sharded training, or done already
            return

        bf16 = str(self.trainer.precision).startswith("bf16")
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16 if bf16 else None, reduce_dtype=torch.float32)
        for block in self.model.blocks:
            fully_shard(block, mesh=mesh["data_parallel"], mp_policy=policy)
        fully_shard(self.model, mesh=mesh["data_parallel"], mp_policy=policy)

    def forward(self, idx: Tensor) -> Tensor:
        return self.model(idx)

    @property
    def flops_per_batch(self) -> float | None:
        """FLOPs of one batch, read by Lightning's ThroughputMonitor at every stage: a training
        step's (forward and backward), and a third of it while validating (forward only: 2 of the 6
        FLOPs per weight, 4 of the 12 per attention score, attnlab.flops)."""
        if self.train_flops_per_batch is None:
            return None
        trainer = self._trainer
        return self.train_flops_per_batch if trainer is None or trainer.training else self.train_flops_per_batch / 3

    def model_step(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        """The one step shared by training and validation: (logits, mean loss over the scored
        targets). Targets equal to IGNORE_INDEX are not scored: every token of text is, a
        synthetic task's answers only."""
        x, y = batch
        logits = self.model(x)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), ignore_index=IGNORE_INDEX)
        return logits, loss

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor | None:
        logits, loss = self.model_step(batch)
        self.tokens_seen += batch[0].numel() * self.trainer.world_size
        if not torch.isfinite(loss):
            return self._nonfinite_training_loss(loss)
        self._consecutive_skips = 0
        # Under DDP, the mean over the global batch (what one process would log), not rank 0's share.
        self.log("train/loss", loss, prog_bar=True, sync_dist=self.trainer.world_size > 1)
        self.log("train/tokens_seen", float(self.tokens_seen))
        if self.log_accuracy:
            self.train_acc(logits.argmax(-1), batch[1])
            self.log("train/acc", self.train_acc)
        return loss

    def _nonfinite_training_loss(self, loss: Tensor) -> None:
        """Stop, or skip this batch (returning None makes Lightning skip backward and the
        update); the parameters never take a step from a NaN/Inf loss either way."""
        self._consecutive_skips += 1
        if self.nonfinite_loss == "skip" and self._consecutive_skips <= MAX_CONSECUTIVE_SKIPS:
            self.skipped_batches += 1
            log.warning("non-finite training loss (%s) at step %d: batch skipped (%d so far)",
                        loss.item(), self.global_step, self.skipped_batches)
            self.log("train/skipped_batches", float(self.skipped_batches))
            return None
        reason = (f"{MAX_CONSECUTIVE_SKIPS} batches in a row" if self.nonfinite_loss == "skip"
                  else "trainer.nonfinite_loss=stop")
        raise NonFiniteLossError(
            f"non-finite training loss ({loss.item()}) at step {self.global_step} ({reason}); "
            f"{_saved_checkpoints(self.trainer)}; lower optim.lr, or resume with resume=auto "
            f"and trainer.nonfinite_loss=skip")

    def on_validation_epoch_end(self) -> None:
        # Raised before ModelCheckpoint runs, so best.ckpt is never replaced by a NaN model.
        if self.trainer.sanity_checking:
            return
        loss = self.val_loss.compute()
        if not torch.isfinite(loss):
            raise NonFiniteLossError(f"non-finite validation loss ({loss.item()}) at step "
                                     f"{self.global_step}; {_saved_checkpoints(self.trainer)}")

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        logits, loss = self.model_step(batch)
        self.val_loss.update(loss, weight=(batch[1] != IGNORE_INDEX).sum())
        self.val_ppl.update(logits.float(), batch[1])
        self.log("val/loss", self.val_loss, prog_bar=True)
        self.log("val/ppl", self.val_ppl)
        if self.log_accuracy:
            self.val_acc.update(logits.argmax(-1), batch[1])
            self.log("val/acc", self.val_acc, prog_bar=True)

    def configure_optimizers(self):
        o = self.optim
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            # Norm gains, biases and embeddings are not shrunk towards zero (GPT-2/LLaMA practice).
            (no_decay if p.ndim < 2 or name.startswith("wte.") else decay).append(p)
        # The fused kernel: one pass over all parameters instead of a loop of small ops
        # (tiny preset on CPU: 14 ms instead of 101 ms per step, bench/RESULTS.md). Not under
        # 16-mixed: its gradient scaler would leave the unscaling to the fused step, and gradients
        # still scaled cannot be clipped (configure_gradient_clipping).
        fused = (all(p.device.type in ("cpu", "cuda") for p in self.model.parameters())
                 and self._gradient_scaler() is None)
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps, fused=fused)
        warmup = max(1, min(o.warmup_steps, self.max_steps - 1))
        scheduler = torch.optim.lr_scheduler.SequentialLR(
            optimizer,
            [torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1.0 / warmup, total_iters=warmup),
             CosineToFloor(optimizer, T_max=max(1, self.max_steps - warmup), eta_min=o.lr * o.min_lr_ratio)],
            milestones=[warmup])
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_before_optimizer_step(self, optimizer) -> None:
        """Once, before the first update (gradients accumulated and reduced): every trainable
        parameter has a gradient. Without one, a parameter would never train and no loss or error
        would show it, e.g. a compiled kernel that dropped the gradient of a variant's term."""
        if self._gradients_checked:
            return
        self._gradients_checked = True
        missing = parameters_without_gradient(self.model)
        if missing:
            config = self.model.config
            shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
            raise UntrainedParametersError(
                f"{len(missing)} parameter(s) of variant {config.variant!r} got no gradient in the first step, "
                f"so this run would never train them: {shown}. Stopped before the first update "
                f"(model.attn_kernel={config.attn_kernel!r}, device {self.device.type}, "
                f"precision {self.trainer.precision}); model.attn_kernel=explicit computes every term "
                f"without a fused kernel, and a variant's forward must use every parameter it defines.")

    def _gradient_scaler(self):
        return getattr(self.trainer.precision_plugin, "scaler", None) if self._trainer is not None else None

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Clip as Lightning does, except that its mixed-precision plugin refuses any optimizer that
        unscales gradients itself (the fused AdamW), even under bf16-mixed, whose gradients are never
        scaled: there they are clipped as under 32-true."""
        if (gradient_clip_val and self._gradient_scaler() is None
                and getattr(optimizer, "_step_supports_amp_scaling", False)):
            plugin = self.trainer.precision_plugin
            by_value = GradClipAlgorithmType(gradient_clip_algorithm or "norm") == GradClipAlgorithmType.VALUE
            (plugin.clip_grad_by_value if by_value else plugin.clip_grad_by_norm)(optimizer, gradient_clip_val)
            return
        self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["tokens_seen"] = self.tokens_seen
        checkpoint["skipped_batches"] = self.skipped_batches

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.tokens_seen = checkpoint.get("tokens_seen", 0)
        self.skipped_batches = checkpoint.get("skipped_batches", 0)


def _saved_checkpoints(trainer: L.Trainer) -> str:
    """'last good checkpoint: PATH (step N); best: PATH (step M)', from this run's saves."""
    saved = []
    for callback in trainer.callbacks:
        if isinstance(callback, LastCheckpoint) and callback.path.is_file():
            saved.append(("last good checkpoint", callback.path))
        elif isinstance(callback, ModelCheckpoint) and callback.best_model_path:
            saved.append(("best", Path(callback.best_model_path)))
    return "; ".join(f"{label}: {path} (step {checkpoint_step(path)})" for label, path in saved
                     if path.is_file()) or "no checkpoint saved yet"

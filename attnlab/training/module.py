"""A thin LightningModule around an injected ``GPT``, shared by every variant."""

from __future__ import annotations

import dataclasses

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import MeanMetric
from torchmetrics.text import Perplexity

from attnlab.model import GPT
from attnlab.training.config import OptimConfig


class LanguageModelModule(L.LightningModule):
    def __init__(self, model: GPT, optim: OptimConfig, max_steps: int,
                 flops_per_batch: float | None = None) -> None:
        super().__init__()
        self.model = model
        self.optim = optim
        self.max_steps = max_steps
        if flops_per_batch is not None:
            self.flops_per_batch = flops_per_batch  # read by Lightning's ThroughputMonitor
        # Checkpoints carry the model's settings so evaluate/resume can rebuild and check them.
        self.save_hyperparameters({"model_config": model.config.to_dict(),
                                   "optim": dataclasses.asdict(optim), "max_steps": max_steps})
        self.val_loss = MeanMetric()
        self.val_ppl = Perplexity()
        self.tokens_seen = 0

    def forward(self, idx: Tensor) -> Tensor:
        return self.model(idx)

    def model_step(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        """The one step shared by training and validation: (logits, mean token loss)."""
        x, y = batch
        logits = self.model(x)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
        return logits, loss

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        _, loss = self.model_step(batch)
        if not torch.isfinite(loss):
            saved = [c.best_model_path for c in self.trainer.checkpoint_callbacks if c.best_model_path]
            raise FloatingPointError(
                f"non-finite training loss ({loss.item()}) at step {self.global_step}; last good "
                f"checkpoints: {', '.join(saved) or 'none yet'} (resume with resume=auto)")
        self.tokens_seen += batch[0].numel() * self.trainer.world_size
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/tokens_seen", float(self.tokens_seen))
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        logits, loss = self.model_step(batch)
        self.val_loss.update(loss, weight=batch[1].numel())
        self.val_ppl.update(logits.float(), batch[1])
        self.log("val/loss", self.val_loss, prog_bar=True)
        self.log("val/ppl", self.val_ppl)

    def configure_optimizers(self):
        o = self.optim
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            # Norm gains, biases and embeddings are not shrunk towards zero (GPT-2/LLaMA practice).
            (no_decay if p.ndim < 2 or name.startswith("wte.") else decay).append(p)
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps)
        warmup = max(1, min(o.warmup_steps, self.max_steps - 1))
        scheduler = torch.optim.lr_scheduler.SequentialLR(
            optimizer,
            [torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1.0 / warmup, total_iters=warmup),
             torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, self.max_steps - warmup),
                                                        eta_min=o.lr * o.min_lr_ratio)],
            milestones=[warmup])
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["tokens_seen"] = self.tokens_seen

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.tokens_seen = checkpoint.get("tokens_seen", 0)

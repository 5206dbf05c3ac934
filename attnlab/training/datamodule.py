"""LightningDataModule over the packed token shards; the same data order for every variant."""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader

from attnlab.data import PreparedData, TokenWindowDataset


class TokenDataModule(L.LightningDataModule):
    def __init__(self, prepared: PreparedData, seq_len: int, batch_size: int, seed: int,
                 num_workers: int = 0) -> None:
        super().__init__()
        self.prepared = prepared
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.seed = seed
        self.num_workers = num_workers

    def setup(self, stage: str | None = None) -> None:
        self.train_set = TokenWindowDataset(self.prepared.train, self.seq_len)
        self.val_set = TokenWindowDataset(self.prepared.val, self.seq_len)

    def train_dataloader(self) -> DataLoader:
        # The shuffle generator depends on the seed only (not on the model), so every
        # variant sees the same windows in the same order for a given seed.
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True, drop_last=True,
                          generator=torch.Generator().manual_seed(self.seed),
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size, shuffle=False,
                          num_workers=self.num_workers)

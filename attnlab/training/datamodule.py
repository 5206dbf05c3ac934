"""LightningDataModule over the packed token shards, or a synthetic task's streams; the same
data order for every variant."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import lightning as L
import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from attnlab.data import PreparedData, TokenWindowDataset
from attnlab.data.synthetic import SyntheticDataset


class EpochPermutationSampler(Sampler[int]):
    """A seeded permutation per epoch that can start part-way, for exact resumption.

    The order depends on (seed, epoch) only, not on the model, so every variant
    sees the same windows in the same order for a given seed. Under DDP each rank
    takes every world_size-th window of the permutation, so ranks read distinct data.
    """

    def __init__(self, n: int, seed: int) -> None:
        self.n = n
        self.seed = seed
        self.epoch = 0
        self.start = 0  # windows of this epoch already consumed before a resume

    def set_epoch(self, epoch: int) -> None:  # called by Lightning at each epoch start
        if epoch != self.epoch:
            self.epoch, self.start = epoch, 0

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        rank, world = _rank_and_world()
        usable = self.n // world * world  # equal shares, so no rank waits for another's extra batch
        order = torch.randperm(self.n, generator=generator)[:usable][rank::world][self.start:].tolist()
        self.start = 0
        return iter(order)

    def __len__(self) -> int:
        return self.n // _rank_and_world()[1]


class StreamSampler(EpochPermutationSampler):
    """The examples of a generated stream in order (they are random already): epoch e holds
    stream indices e*n ... (e+1)*n - 1, so the stream never repeats; rank r of w takes every
    w-th. Resumes part-way like ``EpochPermutationSampler`` (``epoch``, ``start``)."""

    def __init__(self, n: int) -> None:
        super().__init__(n, seed=0)

    def __iter__(self) -> Iterator[int]:
        rank, world = _rank_and_world()
        first = self.epoch * self.n + rank
        order = range(first + self.start * world, first + self.n // world * world, world)
        self.start = 0
        return iter(order)


class RankStrideSampler(Sampler[int]):
    """0 .. n-1 in order, rank r of w taking r, r+w, ... (equal shares), without building the
    index list (a synthetic validation stream is long); no ``set_epoch``: every validation
    sees the same examples."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __iter__(self) -> Iterator[int]:
        rank, world = _rank_and_world()
        return iter(range(rank, self.n // world * world, world))

    def __len__(self) -> int:
        return self.n // _rank_and_world()[1]


def _rank_and_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class ResumableDataLoader(DataLoader):
    """A DataLoader whose position (epoch, batches consumed) is saved in Lightning checkpoints."""

    def __init__(self, dataset: TokenWindowDataset | SyntheticDataset, batch_size: int,
                 sampler: EpochPermutationSampler, num_workers: int, batches_processed: Callable[[], int]) -> None:
        super().__init__(dataset, batch_size=batch_size, drop_last=True, num_workers=num_workers,
                         sampler=sampler, persistent_workers=num_workers > 0)
        # Asked of the training loop, not counted here: the loop and the workers fetch
        # batches ahead of the one being trained on.
        self.batches_processed = batches_processed

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.sampler.epoch, "batches_consumed": self.batches_processed()}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.sampler.epoch = state["epoch"]
        self.sampler.start = state["batches_consumed"] * self.batch_size


class TokenDataModule(L.LightningDataModule):
    def __init__(self, prepared: PreparedData, seq_len: int, batch_size: int, seed: int,
                 num_workers: int = 0) -> None:
        super().__init__()
        self.prepared = prepared
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.seed = seed
        self.num_workers = num_workers
        self.task = prepared.task
        if self.task is not None:  # for a module built on its own; a run checked it before its claim
            self.task.check_seq_len(seq_len)

    def setup(self, stage: str | None = None) -> None:
        if self.task is not None:
            # Validation examples come from data.split_seed's stream: the same for every training seed.
            self.train_set = self.task.dataset("train", self.seed, self.seq_len)
            self.val_set = self.task.dataset("val", self.task.split_seed, self.seq_len)
            return
        self.train_set = TokenWindowDataset(self.prepared.train, self.seq_len)
        self.val_set = TokenWindowDataset(self.prepared.val, self.seq_len)

    def train_dataloader(self) -> DataLoader:
        progress = lambda: self.trainer.fit_loop.epoch_loop.batch_progress.current.processed  # noqa: E731
        sampler = (StreamSampler(len(self.train_set)) if self.task is not None
                   else EpochPermutationSampler(len(self.train_set), self.seed))
        return ResumableDataLoader(self.train_set, self.batch_size, sampler, self.num_workers, progress)

    def val_dataloader(self) -> DataLoader:
        # Under DDP rank r validates windows r, r+world, ...: together the ranks cover exactly
        # the windows one process with the same global batch would (metrics sync across ranks).
        sampler = None
        if self.task is not None:
            sampler = RankStrideSampler(len(self.val_set))
        elif torch.distributed.is_available() and torch.distributed.is_initialized():
            sampler = DistributedSampler(self.val_set, shuffle=False, drop_last=True)
        return DataLoader(self.val_set, batch_size=self.batch_size, sampler=sampler,
                          num_workers=self.num_workers)

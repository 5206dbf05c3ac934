"""Map-style dataset of fixed-length token windows over a shard set."""

from __future__ import annotations

import bisect
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from attnlab.data.config import DataError
from attnlab.data.shards import ShardIndex


def windows_per_shard(index: ShardIndex, seq_len: int) -> list[int]:
    """Non-overlapping windows of ``seq_len`` inputs (+1 target) each shard holds; windows do not
    cross shard boundaries."""
    return [max(0, (s.n_tokens - 1) // seq_len) for s in index.shards]


class TokenWindowDataset(Dataset):
    """Window ``i`` is ``seq_len + 1`` consecutive tokens starting at ``i * seq_len``.

    ``x`` is the first ``seq_len`` of them and ``y`` the last ``seq_len`` (x shifted
    by one), both int64. Consecutive windows share one token (y's last is the next
    x's first) so every token is a target exactly once. Windows stay inside one
    shard; a shard's tail shorter than a window is dropped (< seq_len tokens per
    shard). Being map-style, a ``DistributedSampler`` gives each rank distinct
    windows; memmaps are opened lazily in each worker process, never pickled.
    """

    def __init__(self, index_path: str | os.PathLike, seq_len: int) -> None:
        if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
            raise DataError(f"seq_len must be a positive int, got {seq_len!r}")
        self.index = ShardIndex.load(Path(index_path))  # checks shard sizes
        self.seq_len = seq_len
        self.vocab_size = self.index.vocab_size
        counts = windows_per_shard(self.index, seq_len)
        self._starts = np.cumsum([0, *counts]).tolist()  # first window index of each shard
        if self._starts[-1] == 0:
            raise DataError(f"corpus too small for seq_len={seq_len}: {self.index.path} has "
                            f"{self.index.n_tokens} tokens, a window needs {seq_len + 1}")
        self._maps: list[np.ndarray] | None = None
        self._pid: int | None = None

    def __len__(self) -> int:
        return self._starts[-1]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        window = torch.from_numpy(self._window(i).astype(np.int64))
        return window[:-1], window[1:]

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """A whole batch in one conversion; DataLoader calls this instead of __getitem__."""
        windows = torch.from_numpy(np.stack([self._window(i) for i in indices]).astype(np.int64))  # (B, T+1)
        return list(zip(windows[:, :-1].unbind(0), windows[:, 1:].unbind(0)))

    def _window(self, i: int) -> np.ndarray:
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"window {i} out of range for {len(self)} windows")
        if self._maps is None or self._pid != os.getpid():
            # Plain ndarray views of the maps: slicing an np.memmap costs ~40% more per window.
            self._maps = [m.view(np.ndarray) for m in self.index.memmaps()]
            self._pid = os.getpid()
        shard = bisect.bisect_right(self._starts, i) - 1
        start = (i - self._starts[shard]) * self.seq_len
        return self._maps[shard][start:start + self.seq_len + 1]

    def __getstate__(self) -> dict:
        # Worker processes and DDP spawn pickle the dataset: send paths, not maps.
        state = self.__dict__.copy()
        state["_maps"], state["_pid"] = None, None
        return state

"""Checkpoint writes that a kill can never leave half-done.

Lightning's own writer stages the file in the system temp directory and then
moves it into place. When that directory is on another filesystem than the
results (node-local ``/tmp`` vs a shared cluster filesystem, the usual case)
the move degrades to a copy straight into ``last.ckpt``, and a preemption
during the copy corrupts the resume point. ``atomic_write`` keeps the temporary
file next to its target and renames it over it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from attnlab.atomic import atomic_write


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike,
                        storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        with atomic_write(Path(path), "wb") as file:
            torch.save(checkpoint, file)

"""Checkpoint writes that a kill can never leave half-done.

Lightning's own writer stages the file in the system temp directory and then
moves it into place. When that directory is on another filesystem than the
results (node-local ``/tmp`` vs a shared cluster filesystem, the usual case)
the move degrades to a copy straight into ``last.ckpt``, and a preemption
during the copy corrupts the resume point. Here the temporary file lives next
to its target, is flushed to disk, and is renamed over it: a POSIX rename is
atomic, so a reader sees either the previous checkpoint or the new one.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

TEMP_SUFFIX = ".partial"


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike,
                        storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, temp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=TEMP_SUFFIX,
                                             dir=target.parent)
        try:
            with os.fdopen(handle, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temp_name, target)
        except BaseException:
            Path(temp_name).unlink(missing_ok=True)
            raise
        _fsync_directory(target.parent)  # make the rename itself durable


def remove_partial_writes(directory: Path) -> None:
    """Delete temporary files left by a process killed in the middle of a save."""
    for leftover in directory.glob(f".*{TEMP_SUFFIX}"):
        leftover.unlink(missing_ok=True)


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # not supported on every platform/filesystem; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)

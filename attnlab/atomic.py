"""Writing a file, or a directory of files, so that a kill at any moment leaves either the old
content or the new.

The data goes to a temporary file in the same directory (so the final rename never crosses
a filesystem), is flushed to disk, and is renamed over the target: a POSIX rename is atomic.
Temporary files of a killed writer end in ``PARTIAL_SUFFIX``. A directory (a sharded checkpoint)
is written complete beside its target and swapped in by ``replace_directory``. The file gets the permissions
``open`` would give it (0666 less the umask), not ``mkstemp``'s owner-only 0600: colleagues on a
shared cluster read each other's runs.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

PARTIAL_SUFFIX = ".partial"
REPLACED_SUFFIX = ".replaced"


def _process_umask() -> int:
    try:  # Linux says it without changing it
        status = Path("/proc/self/status").read_text()
        return int(next(line for line in status.splitlines() if line.startswith("Umask:")).split()[1], 8)
    except (OSError, StopIteration, ValueError):
        mask = os.umask(0o022)  # elsewhere reading the umask means setting it; put it back at once
        os.umask(mask)
        return mask


# Read once, at import: reading it later, while other threads create files, could race.
UMASK = _process_umask()
FILE_MODE = 0o666 & ~UMASK


@contextmanager
def atomic_write(path: Path, mode: str = "w", **open_kwargs: Any) -> Iterator[IO[Any]]:
    """``with atomic_write(path) as f: f.write(...)``: ``path`` changes only if the block completes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=PARTIAL_SUFFIX, dir=path.parent)
    try:
        os.fchmod(handle, FILE_MODE)
        with os.fdopen(handle, mode, **open_kwargs) as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def staging_path(path: Path) -> Path:
    """Where a directory that is to replace ``path`` is written first (``replace_directory``)."""
    return path.with_name(f".{path.name}{PARTIAL_SUFFIX}")


def replace_directory(staged: Path, path: Path) -> None:
    """Put the complete directory ``staged`` in place of ``path`` (a directory, a file or nothing).
    No rename replaces a non-empty directory, so the old one is renamed aside first: a kill between
    the two renames leaves it there, and ``remove_partial_writes`` puts it back."""
    aside = path.with_name(f".{path.name}{REPLACED_SUFFIX}")
    _remove(aside)
    if path.exists():
        os.replace(path, aside)
    os.replace(staged, path)
    _remove(aside)


def remove_partial_writes(directory: Path) -> None:
    """Delete what a process killed in the middle of a write left (temporary files, a directory
    being staged), and put back a directory that ``replace_directory`` had renamed aside."""
    for leftover in directory.glob(f".*{PARTIAL_SUFFIX}"):
        _remove(leftover)
    for aside in directory.glob(f".*{REPLACED_SUFFIX}"):
        target = aside.with_name(aside.name[1:-len(REPLACED_SUFFIX)])
        if target.exists():
            _remove(aside)
        else:
            os.replace(aside, target)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)

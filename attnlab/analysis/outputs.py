"""An evaluation's output directory: a whole evaluation replaces what the previous one wrote there.

The files an evaluation writes are listed in its ``evaluation.json`` (``outputs``). The next whole
evaluation into that directory removes them before it writes, so a table or figure it does not make
this time (a variant, a ladder or a heatmap left out) is not left beside its new ones as if it were
one of them. An evaluation of some outputs only (``outputs=[samples]``) updates those and keeps the
rest. Files no evaluation wrote (a user's notes) stay.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

RECORD = "evaluation.json"


@dataclass(frozen=True)
class OutputsBefore:
    out: Path
    files: dict[str, tuple[int, int]]  # relative path: (mtime_ns, size), to tell rewritten files
    kept: tuple[str, ...]  # the previous evaluation's outputs an update leaves in place

    def written(self) -> list[str]:
        """What the directory's evaluations wrote: this one's files (new or rewritten since), and the
        previous outputs an update kept that are still there; relative, sorted, without the record."""
        now = _snapshot(self.out)
        new = {name for name, stamp in now.items() if name != RECORD and self.files.get(name) != stamp}
        return sorted(new | {name for name in self.kept if name in now})


def prepare_outputs(out: Path, replace: bool = True) -> OutputsBefore:
    """Before an evaluation writes into ``out``: remove the files the last evaluation there listed
    (``replace``), or keep them as part of this one's (an update of some outputs)."""
    listed = _listed_outputs(out)
    if replace:
        removed = 0
        for name in listed:
            path = out / name
            # Only plain files inside ``out``: a hand-edited list cannot reach elsewhere.
            if path.is_file() and not path.is_symlink() and out.resolve() in path.resolve().parents:
                path.unlink()
                removed += 1
        if removed:
            log.info("removed %d file(s) of the previous evaluation in %s", removed, out)
    return OutputsBefore(out, _snapshot(out), () if replace else tuple(listed))


def _listed_outputs(out: Path) -> list[str]:
    record = out / RECORD
    if not record.is_file():
        return []
    try:
        listed = json.loads(record.read_text(encoding="utf-8")).get("outputs", [])
    except (ValueError, OSError, AttributeError):  # not an evaluation's record: nothing to remove
        return []
    return [name for name in listed if isinstance(name, str) and not Path(name).is_absolute()]


def _snapshot(out: Path) -> dict[str, tuple[int, int]]:
    if not out.is_dir():
        return {}
    return {path.relative_to(out).as_posix(): (path.stat().st_mtime_ns, path.stat().st_size)
            for path in out.rglob("*") if path.is_file()}

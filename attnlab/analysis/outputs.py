"""An evaluation's output directory: a whole evaluation replaces what the previous one wrote there.

The files an evaluation writes are listed in its ``evaluation.json`` (``outputs``). When the next whole
evaluation into that directory has written its own, it removes the listed ones it did not write again,
so a table or figure it does not make this time (a variant, a ladder or a heatmap left out) is not
left beside the new ones as if it were one of them (nor a folder it leaves empty). Nothing is
removed before the new files exist: an evaluation that fails leaves the previous one's files. An
evaluation of some outputs only (``outputs=[heatmaps]``) replaces the files of those (fewer layers:
the others' heatmaps go) and keeps the rest; a ladder's or a battery's makes its tables always and its
figures where asked (``redone_by_family``).

Only what evaluations write is looked at (``OWNED``): the tables, figures and heatmaps folders and the
model outputs' files beside them. Anything else in the directory (a user's notes, Hydra's logs, runs
trained under it) is never listed and never removed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

RECORD = "evaluation.json"
# What an evaluation (attnlab/analysis/pipeline.py, ladder.py, battery.py) writes into its directory.
OWNED = ("tables", "figures", "heatmaps", "samples.json", "samples.md", "attention_stats.csv", "attention_stats.md",
         "head_scores.csv", "head_scores.md", "loss_by_position.csv")


@dataclass(frozen=True)
class OutputsBefore:
    """The output directory as an evaluation found it: its owned files (to tell which it rewrote)
    and those the previous evaluation listed."""

    out: Path
    files: dict[str, tuple[int, int]]  # relative path: (mtime_ns, size)
    listed: tuple[str, ...]

    def finish(self, redone: Callable[[str], bool] = lambda name: True) -> list[str]:
        """After the evaluation has written its files, before its record: what it wrote (new or
        rewritten), and the previous evaluation's files it did not write again removed where they
        are of an output it redid (``redone``: by relative path; every one for a whole evaluation),
        kept as part of this one's elsewhere. Relative and sorted, for ``evaluation.json``'s ``outputs``."""
        now = _snapshot(self.out)
        written = {name for name, stamp in now.items() if self.files.get(name) != stamp}
        previous = [name for name in self.listed if name in now and name not in written]
        stale = [name for name in previous if redone(name)]
        for name in stale:
            (self.out / name).unlink()
            _remove_if_emptied((self.out / name).parent, self.out)
        if stale:
            log.info("removed %d file(s) of the previous evaluation in %s that this one did not write: %s",
                     len(stale), self.out, ", ".join(stale))
        return sorted(written | (set(previous) - set(stale)))


def output_of(name: str) -> str:
    """Which of the evaluation's outputs (``EvaluateConfig.outputs``) wrote the file ``name``
    (relative to the evaluation's directory)."""
    top, stem = name.split("/")[0], Path(name).stem
    if top == "heatmaps":
        return "heatmaps"
    if stem in ("head_scores", "loss_by_position", "samples"):  # beside the tables, and their figures
        return stem
    if stem in ("attention_stats", "attention_stats_per_run"):
        return "attention_stats"
    return "figures" if top == "figures" else "tables"


def redone_by(made: Collection[str]) -> Callable[[str], bool]:
    """``OutputsBefore.finish``'s ``redone`` for an evaluation that made the outputs ``made``: the
    previous files of the others are kept."""
    made = frozenset(made)
    return lambda name: output_of(name) in made


def redone_by_family(requested: Collection[str]) -> Callable[[str], bool]:
    """``redone_by`` for a ladder's or a battery's evaluation asked for the outputs ``requested``: it
    makes its tables always (its ``tables/per_run.csv`` is what a later evaluation reads back instead
    of the runs) and its figures where asked; it loads no model, so the previous files of the other
    outputs asked for go, as in an experiment's evaluation, and those not asked for stay."""
    return redone_by({"tables", *requested})


def prepare_outputs(out: Path) -> OutputsBefore:
    """Before an evaluation writes into ``out``: what is there, and what the last evaluation listed."""
    return OutputsBefore(out, _snapshot(out), tuple(_listed_outputs(out)))


def _listed_outputs(out: Path) -> list[str]:
    record = out / RECORD
    if not record.is_file():
        return []
    try:
        listed = json.loads(record.read_text(encoding="utf-8")).get("outputs", [])
    except (ValueError, OSError, AttributeError):  # not an evaluation's record: nothing to remove
        return []
    # Only files an evaluation owns, inside ``out``: a hand-edited list cannot reach elsewhere.
    return [name for name in listed if isinstance(name, str) and _owned(name)]


def _remove_if_emptied(folder: Path, out: Path) -> None:
    """A variant's heatmap folder whose last file went goes too (not ``out`` itself, and not a
    folder holding anything else, a user's file included)."""
    while folder != out and folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
        folder = folder.parent


def _owned(name: str) -> bool:
    parts = Path(name).parts
    return bool(parts) and not Path(name).is_absolute() and ".." not in parts and parts[0] in OWNED


def _snapshot(out: Path) -> dict[str, tuple[int, int]]:
    files = {}
    for top in OWNED:
        path = out / top
        for file in ([path] if path.is_file() else path.rglob("*") if path.is_dir() else []):
            if file.is_file() and not file.is_symlink():
                stat = file.stat()
                files[file.relative_to(out).as_posix()] = (stat.st_mtime_ns, stat.st_size)
    return files

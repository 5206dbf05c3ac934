"""A sharded checkpoint (``trainer=fsdp``) is written whole beside its place and swapped in: a
kill during the save, or between the swap's two renames, leaves a complete checkpoint to resume.

Lightning's real ``ModelParallelStrategy.save_checkpoint`` writes the shards; its
distributed-checkpoint writer is replaced by one that writes a file per step, so that a kill
can be placed inside it (the two-process FSDP run itself: tests/test_distributed.py).
"""

import os
from pathlib import Path

import pytest
import torch
from lightning.pytorch.strategies import model_parallel

from attnlab.atomic import remove_partial_writes, replace_directory
from attnlab.checkpoint import is_checkpoint
from attnlab.training.trainer import FullyShardedStrategy


class Killed(BaseException):
    """A SIGKILL: nothing after it runs (no ``except Exception`` catches it)."""


@pytest.fixture
def strategy(monkeypatch):
    """One rank's strategy, with the collective calls of a single process."""
    strategy = FullyShardedStrategy(tensor_parallel_size=1, save_distributed_checkpoint=True)
    monkeypatch.setattr(strategy, "broadcast", lambda obj, src=0: obj)
    monkeypatch.setattr(strategy, "barrier", lambda name=None: None)
    monkeypatch.setattr(type(strategy), "global_rank", property(lambda self: 0))
    return strategy


def _write_shards(kill_after_shard: bool, monkeypatch):
    def save(state, path: Path) -> None:
        step = state["state_dict"]["step"]
        (path / "__0_0.distcp").write_text(str(step))
        if kill_after_shard:
            raise Killed
        (path / ".metadata").write_text(str(step))

    monkeypatch.setattr(model_parallel, "_distributed_checkpoint_save", save)


def _step_of(path: Path) -> tuple[str, int]:
    meta = torch.load(path / "meta.pt", weights_only=True)
    return (path / "__0_0.distcp").read_text(), meta["global_step"]


def test_a_kill_during_a_sharded_save_leaves_the_previous_checkpoint_whole(tmp_path, strategy, monkeypatch):
    last = tmp_path / "last.ckpt"
    _write_shards(False, monkeypatch)
    strategy.save_checkpoint({"state_dict": {"step": 5}, "global_step": 5}, last)
    assert is_checkpoint(last) and _step_of(last) == ("5", 5)
    _write_shards(True, monkeypatch)  # killed once the step-10 shard is written, before its metadata
    with pytest.raises(Killed):
        strategy.save_checkpoint({"state_dict": {"step": 10}, "global_step": 10}, last)
    assert _step_of(last) == ("5", 5)  # not step 10's shard beside step 5's metadata
    remove_partial_writes(tmp_path)  # what a resume does first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
    _write_shards(False, monkeypatch)
    strategy.save_checkpoint({"state_dict": {"step": 10}, "global_step": 10}, last)
    assert _step_of(last) == ("10", 10) and sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_a_kill_between_the_swap_s_renames_is_undone_by_the_next_resume(tmp_path, monkeypatch):
    old, new = tmp_path / "last.ckpt", tmp_path / ".last.ckpt.partial"
    for directory, step in ((old, "5"), (new, "10")):
        directory.mkdir()
        (directory / ".metadata").write_text(step)
    renames = []

    def replace_then_killed(src, dst):
        if renames:
            raise Killed
        renames.append((src, dst))
        os.rename(src, dst)

    monkeypatch.setattr(os, "replace", replace_then_killed)
    with pytest.raises(Killed):
        replace_directory(new, old)
    monkeypatch.undo()
    assert not old.exists()  # renamed aside, the new one not yet in place
    remove_partial_writes(tmp_path)
    assert (old / ".metadata").read_text() == "5" and sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
    # Renamed aside and the new one in place: only the one aside is removed.
    new.mkdir()
    (new / ".metadata").write_text("10")
    replace_directory(new, old)
    assert (old / ".metadata").read_text() == "10" and sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]

"""A training process killed at any moment, even in the middle of writing a checkpoint,
is resumed by re-running the same command with resume=auto, and ends exactly where an
uninterrupted run ends (CPU fp32)."""

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from attnlab.checkpoint import checkpoint_step
from attnlab.runs import RunDir
from attnlab.training.run import train
from test_training import REPO, compose_config, tiny_overrides

pytestmark = pytest.mark.slow  # training processes started, killed and resumed

STEPS = 12


def _overrides(tmp_path: Path, corpus: Path, name: str) -> list[str]:
    return [f"experiment_name={name}", *tiny_overrides(tmp_path, corpus), f"trainer.max_steps={STEPS}",
            "trainer.val_every_n_steps=4", "trainer.checkpoint_every_n_steps=1"]


def _start(script: Path, args: list[str], cwd: Path, **env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(script), *args], cwd=cwd, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO), **env},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _train_losses(run: RunDir) -> pd.Series:
    frame = pd.read_csv(run.metrics)
    return frame.dropna(subset=["train/loss"]).set_index("step")["train/loss"]


def test_kills_at_random_points_and_during_a_save_then_resume_is_exact(tmp_path, corpus):
    straight = train(compose_config(_overrides(tmp_path, corpus, "straight")))
    args = [*_overrides(tmp_path, corpus, "killed"), "resume=auto"]
    run = RunDir.for_run(tmp_path / "runs", "killed", "baseline", 0)

    # 1. Killed in the middle of writing a checkpoint: the 4th save, after last.ckpt was
    #    written complete at steps 1, 2 and 3.
    proc = _start(REPO / "tests/scripts/hang_in_save.py", args, tmp_path, HANG_AT_SAVE="4")
    watchdog = threading.Timer(600, proc.kill)  # reading its stdout has no timeout of its own
    watchdog.start()
    for line in proc.stdout:
        if line.startswith("HANGING IN SAVE"):
            break
    watchdog.cancel()
    proc.kill()
    proc.wait(timeout=60)
    partial = list(run.checkpoints.glob(".*.partial"))
    assert len(partial) == 1, "the half-written file is a temporary one"
    assert checkpoint_step(run.last_checkpoint) == 3, "the previous last.ckpt is intact"

    # 2. Killed at random moments while it trains.
    rng = random.Random(0)
    for _ in range(3):
        before = run.last_checkpoint.stat().st_mtime_ns
        proc = _start(REPO / "train.py", args, tmp_path)
        deadline = time.monotonic() + 600
        while proc.poll() is None and run.last_checkpoint.stat().st_mtime_ns == before \
                and time.monotonic() < deadline:
            time.sleep(0.02)  # until this attempt has trained and saved at least one step
        time.sleep(rng.uniform(0.0, 0.4))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        assert 0 < checkpoint_step(run.last_checkpoint) <= STEPS  # always loadable

    # 3. The same command once more finishes the run.
    proc = _start(REPO / "train.py", args, tmp_path)
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output[-3000:]
    assert not list(run.checkpoints.glob(".*.partial")), "leftovers of killed saves are removed"

    a, b = _train_losses(straight), _train_losses(run)
    assert list(a.index) == list(b.index) == list(range(STEPS))
    assert a.tolist() == b.tolist()
    sa, sb = straight.load_summary(), run.load_summary()
    for key in ("steps", "tokens_seen", "final_train_loss", "final_val_loss", "best_val_loss"):
        assert sa[key] == sb[key], key

"""A SIGTERM to a parallel sweep: every worker still training saves its step before any worker ends
(the first to end breaks joblib's pool, which kills the rest)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from attnlab.training import sweep_stop
from test_training import REPO

pytestmark = pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="processes are read from Linux's /proc")

# A worker training: catches SIGTERM, then takes a while to save its step, then ends its handler.
TRAINING = """
import pathlib, signal, sys, time
got = []
signal.signal(signal.SIGTERM, lambda *_: got.append(1))
print("training", flush=True)
while not got:
    time.sleep(0.01)
time.sleep(0.5)
pathlib.Path(sys.argv[1]).write_text("saved")
signal.signal(signal.SIGTERM, signal.SIG_DFL)
time.sleep(60)
"""
# A worker that has saved: waits for the others, then says whether the training one had saved.
SAVED = """
import pathlib, signal, sys
import os
from attnlab.training.sweep_stop import ignores, wait_for_siblings_to_save
print("waiting", flush=True)
wait_for_siblings_to_save(grace_s=30)
print(pathlib.Path(sys.argv[1]).is_file(), ignores(os.getpid(), signal.SIGTERM), flush=True)
"""


@pytest.mark.slow  # three Python processes, one importing attnlab
def test_a_worker_that_saved_waits_for_its_siblings_still_training_but_not_for_idle_ones(tmp_path):
    saved = tmp_path / "saved"
    training = subprocess.Popen([sys.executable, "-c", TRAINING, str(saved)], stdout=subprocess.PIPE, text=True)
    idle = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert training.stdout.readline().strip() == "training"
        waiter = subprocess.Popen([sys.executable, "-c", SAVED, str(saved)], stdout=subprocess.PIPE, text=True,
                                  cwd=REPO)
        assert waiter.stdout.readline().strip() == "waiting"
        assert sweep_stop.saving(training.pid, signal.SIGTERM) and not sweep_stop.saving(idle.pid, signal.SIGTERM)
        training.send_signal(signal.SIGTERM)
        out, _ = waiter.communicate(timeout=60)
        # The training sibling had saved when the waiter was let go, and the waiter ignores a second SIGTERM.
        assert out.split() == ["True", "True"]
        assert not sweep_stop.saving(training.pid, signal.SIGTERM)
    finally:
        for process in (training, idle):
            process.kill()
            process.wait()


def test_the_sweep_signals_its_busy_workers_first_and_its_idle_ones_once_those_have_saved(monkeypatch):
    """An idle worker ends on SIGTERM at once, and the pool would then kill the ones still saving."""
    # 11: busy, saves after two looks; 14: idle, handed a job while 11 saves; 12: idle; 13: joblib's
    # resource tracker (blocks it).
    looks = {11: 0, 14: 0}
    sent: list[tuple[int, int]] = []

    def saving(pid, signum):
        looks[pid] += 1
        return looks[pid] <= 2

    monkeypatch.setattr(sweep_stop, "child_processes", lambda: [11, 12, 13, 14])
    monkeypatch.setattr(sweep_stop, "ignores", lambda pid, signum: pid == 13)
    monkeypatch.setattr(sweep_stop, "catches", lambda pid, signum: pid == 11 or (pid == 14 and looks[11] > 0))
    monkeypatch.setattr(sweep_stop, "saving", saving)
    monkeypatch.setattr(sweep_stop, "running", lambda pid: False)
    monkeypatch.setattr(sweep_stop, "_send", lambda pids, signum: sent.extend((pid, dict(looks)) for pid in pids))
    monkeypatch.setattr(sweep_stop.time, "sleep", lambda s: None)
    previous = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(SystemExit) as exit_:
            sweep_stop.stop_workers(signal.SIGTERM, None)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert exit_.value.code == 128 + signal.SIGTERM
    # Each after the ones before it stopped saving (a third look at it); the tracker never.
    assert [pid for pid, _ in sent] == [11, 14, 12]
    assert sent[1][1][11] > 2 and sent[2][1][14] > 2

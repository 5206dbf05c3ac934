"""A Hydra callback that passes SIGTERM, sent to a parallel sweep's launching process, on to the
processes training its runs.

Under ``hydra/launcher=joblib`` the runs train in worker processes (joblib's loky pool). A
SIGTERM to the process that started the sweep (``kill``, ``timeout``, a job scheduler that signals
one process) ended it alone: its workers trained on, orphaned, holding their runs' locks, so that
the sweep started again with ``resume=auto`` was refused run by run. Ctrl-C reaches every process
of the terminal's foreground group already. Registered for every run in ``configs/train.yaml``.

The first worker to end breaks joblib's pool, which then SIGKILLs the others at once: one that had
not saved its step yet (a slower variant, a step under way on a busy machine) lost it. So a worker
that has saved waits for its siblings still busy with a run to save theirs before it ends
(``wait_for_siblings_to_save``), and the launching process signals the busy workers before the idle
ones, which SIGTERM ends at once. A worker is busy while it catches SIGTERM: from the start of a job
to the end of its run's loggers (``attnlab.training.callbacks.record_stop_requests``).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from attnlab.training.estimate import is_joblib

log = logging.getLogger(__name__)

# How long the launching process waits for its workers to save their step and exit; a scheduler
# sends SIGKILL some time after SIGTERM anyway (Slurm's KillWait: 30 s by default).
WORKERS_GRACE_S = 60.0


class StopWorkersWithTheSweep(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not is_joblib(config.hydra.launcher):
            return  # the basic launcher trains in this process; Slurm signals each job itself
        try:
            signal.signal(signal.SIGTERM, stop_workers)
        except ValueError:  # not the main thread
            pass


def stop_workers(signum: int, frame: Any) -> None:
    """SIGTERM every child process (each saves its step's checkpoint and exits), those training first,
    wait for them for ``WORKERS_GRACE_S`` at most, then end this process as SIGTERM would have."""
    # Not those that block or ignore it (joblib's resource tracker): they would be waited for in vain.
    children = [pid for pid in child_processes() if not ignores(pid, signum)]
    log.warning("%s: passing it on to the sweep's %d worker process(es), waiting for them to save and exit",
                signal.Signals(signum).name, len(children))
    deadline = time.monotonic() + WORKERS_GRACE_S
    # An idle worker ends at once, and the pool would then kill the ones still saving: those training
    # first, again while one more starts to (a job the pool handed out meanwhile), then the rest.
    signalled: list[int] = []
    while time.monotonic() < deadline:
        training = [pid for pid in children if pid not in signalled and catches(pid, signum)]
        if not training:
            break
        _send(training, signum)
        signalled += training
        while time.monotonic() < deadline and any(saving(pid, signum) for pid in signalled):
            time.sleep(0.2)
    _send([pid for pid in children if pid not in signalled], signum)
    while time.monotonic() < deadline and any(running(pid) for pid in children):
        time.sleep(0.2)
    signal.signal(signum, signal.SIG_DFL)
    sys.exit(128 + signum)


def wait_for_siblings_to_save(signum: int = signal.SIGTERM, grace_s: float = WORKERS_GRACE_S) -> None:
    """In a worker that has saved its step: ignore ``signum`` from now on (a second one, a
    scheduler's to every process, must not end it before the others have saved) and wait, for
    ``grace_s`` at most, until no other worker of the same parent still catches it (is busy with a run)."""
    signal.signal(signum, signal.SIG_IGN)
    parent = os.getppid()
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and os.getppid() == parent and any(
            saving(pid, signum) for pid in child_processes(parent) if pid != os.getpid()):
        time.sleep(0.2)


def _send(pids: list[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def child_processes(pid: int | None = None) -> list[int]:
    """This process's children, from ``/proc`` (Linux); none where it does not list them."""
    pid = os.getpid() if pid is None else pid
    children: list[int] = []
    for listing in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            children += [int(child) for child in listing.read_text().split()]
        except (OSError, ValueError):
            continue
    return sorted(set(children))


def ignores(pid: int, signum: int) -> bool:
    """Whether process ``pid`` blocks or ignores ``signum`` (its masks in ``/proc/<pid>/status``)."""
    masks = _signal_masks(pid)
    return masks is None or any(masks[name] >> (signum - 1) & 1 for name in ("SigBlk", "SigIgn"))


def catches(pid: int, signum: int) -> bool:
    """Whether process ``pid`` has a handler of its own for ``signum``: a joblib worker's, while busy with a run."""
    masks = _signal_masks(pid)
    return masks is not None and bool(masks["SigCgt"] >> (signum - 1) & 1)


def saving(pid: int, signum: int) -> bool:
    """A worker that will save its step on ``signum`` and has not yet: running, catching it, not blocking it."""
    return running(pid) and catches(pid, signum) and not ignores(pid, signum)


def _signal_masks(pid: int) -> dict[str, int] | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None  # gone
    return {line.split(":")[0]: int(line.split()[1], 16) for line in status.splitlines()
            if line.startswith(("SigBlk:", "SigIgn:", "SigCgt:"))}


def running(pid: int) -> bool:
    """Alive and not a zombie (an exited child its parent has not reaped yet)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"

"""One GPU shared by the GPU check's step workers: which case each takes next, the memory each
may hold while it runs, and one worker at a time in a timed window.

Compiling a case (Dynamo, AOTAutograd, Inductor, Triton) is tens of seconds of CPU work; its
timed steps are a few seconds of GPU. So several worker processes compile side by side, each
admitted only while the plan's estimates of every case (and phase) holding the GPU fit its
memory, and they time their steps one after another: no two timed windows overlap.

All state lives in files under one directory, guarded by ``flock``, so that a worker that dies
(a CUDA error, a crash) gives its locks back with its process, and its memory leaves the ledger
once its pid is gone. POSIX only (``fcntl``), as the GPU machines the check runs on.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

Case = tuple[str, int, str]
WAIT = "wait"  # claim's answer when the next case does not fit beside what holds the GPU now


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


@contextlib.contextmanager
def _flocked(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class SharedGpu:
    """The ledger of one GPU under ``directory``, for processes that each open it there.

    ``memory_bytes``: what the cases and phases admitted at once may hold together, by their
    estimates. A case larger than that still runs, alone."""

    def __init__(self, directory: Path, memory_bytes: int) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.memory_bytes = memory_bytes
        self._state_file = self.directory / "state.json"

    @contextlib.contextmanager
    def _state(self) -> Iterator[dict]:
        with _flocked(self.directory / "state.lock"):
            state = (json.loads(self._state_file.read_text(encoding="utf-8")) if self._state_file.exists()
                     else {"claimed": [], "held": {}, "alone": [], "retried": []})
            # A holder whose process is gone (it crashed, or was stopped) holds nothing any more.
            state["held"] = {k: h for k, h in state["held"].items() if _alive(h["pid"])}
            yield state
            tmp = self._state_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(state), encoding="utf-8")
            tmp.replace(self._state_file)

    def claim(self, cases: list[Case], estimate: Callable[[Case], int], holder: str) -> dict | str | None:
        """The next case for ``holder`` (a worker's name, one case at a time), in ``cases``' order:
        ``{"case", "alone", "beside_bytes"}`` once it fits beside what holds the GPU; ``WAIT`` while
        it does not; ``None`` when every case is taken. A case to be retried alone goes first, once
        nothing else holds the GPU; until then, nothing else is admitted."""
        with self._state() as state:
            held = sum(h["bytes"] for h in state["held"].values())
            if any(h.get("alone_retry") for h in state["held"].values()):
                return WAIT  # a retry has the GPU to itself until it ends
            if state["alone"]:
                if state["held"]:
                    return WAIT
                retry = state["alone"].pop(0)
                case, alone, note = tuple(retry["case"]), True, retry["note"]
            else:
                taken = {tuple(c) for c in state["claimed"]}
                case = next((c for c in cases if tuple(c) not in taken), None)
                if case is None:
                    return None
                if state["held"] and held + estimate(case) > self.memory_bytes:
                    return WAIT
                state["claimed"].append(list(case))
                alone, note = not state["held"], None
            state["held"][holder] = {"pid": os.getpid(), "bytes": estimate(case), "case": list(case),
                                     "alone_retry": note is not None}
            return {"case": case, "alone": alone, "beside_bytes": held, "retry_of": note}

    def retry_alone(self, case: Case, note: str) -> bool:
        """Queue ``case`` (out of memory beside others: ``note``) to run again with the GPU to
        itself, once; False if it already had its retry."""
        with self._state() as state:
            if list(case) in state["retried"]:
                return False
            state["retried"].append(list(case))
            state["alone"].append({"case": list(case), "note": note})
            return True

    def hold(self, holder: str, nbytes: int) -> None:
        """``holder`` (a phase running beside the workers) holds ``nbytes`` until ``release``."""
        with self._state() as state:
            state["held"][holder] = {"pid": os.getpid(), "bytes": nbytes, "case": None}

    def release(self, holder: str) -> None:
        with self._state() as state:
            state["held"].pop(holder, None)

    @contextlib.contextmanager
    def timed_window(self) -> Iterator[None]:
        """The GPU's timed window, one holder at a time (blocks until it is free)."""
        with _flocked(self.directory / "timing.lock"):
            yield

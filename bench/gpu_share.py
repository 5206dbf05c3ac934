"""One GPU shared by the GPU check's step workers and its phases: which case a worker takes next,
the memory each may hold while it runs, one at a time in a timed window, and what else used the
GPU during each timed window.

Compiling a case (Dynamo, AOTAutograd, Inductor, Triton) is tens of seconds of CPU work; its
timed steps are a few seconds of GPU. So several worker processes compile side by side, each
admitted only while the plan's estimates of every case and phase holding the GPU fit its memory,
and they time their steps one after another: no two timed windows overlap. A worker's first step
(the one that compiles) also runs kernels on the GPU, in bursts; a timed window records how many
of those, and which phases, ran beside it.

All state lives in files under one directory, guarded by ``flock``, so that a worker that dies
(a CUDA error, a crash) gives its locks back with its process, and its memory leaves the ledger
once its pid is gone. POSIX only (``fcntl``), as the GPU machines the check runs on.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from attnlab.atomic import atomic_write

Case = tuple[str, int, str]
WAIT = "wait"  # claim's answer when the next case does not fit beside what holds the GPU now
LOG_KEPT = 500  # first steps and phases remembered for the timed windows' notes
# The next case in order that does not fit beside what holds the GPU is passed over for later ones
# that do, for this long at most; then nothing more is admitted until it fits (the GPU drains).
HEAD_WAIT_S = 60.0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


@contextlib.contextmanager
def _flocked(path: Path, until: float | None = None) -> Iterator[None]:
    """``path``'s exclusive lock; with ``until``, TimeoutError if it is not free by then."""
    with path.open("a") as handle:
        if until is None:
            fcntl.flock(handle, fcntl.LOCK_EX)
        else:
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.time() >= until:
                        raise TimeoutError(f"{path.name} was still held at the deadline") from None
                    time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _overlaps(log: list[list], start: float, end: float) -> list[list]:
    """The [name, pid, began, ended or None] entries of ``log`` that ran at some time in [start, end]."""
    return [e for e in log if e[-2] <= end and (e[-1] is None or e[-1] >= start)]


class SharedGpu:
    """The ledger of one GPU under ``directory``, for processes that each open it there.

    ``memory_bytes``: what the cases and phases admitted at once may hold together, by their
    estimates. A case larger than that still runs, alone."""

    def __init__(self, directory: Path, memory_bytes: int, head_wait_s: float = HEAD_WAIT_S) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.memory_bytes = memory_bytes
        self.head_wait_s = head_wait_s
        self._state_file = self.directory / "state.json"

    @contextlib.contextmanager
    def _state(self) -> Iterator[dict]:
        with _flocked(self.directory / "state.lock"):
            state = (json.loads(self._state_file.read_text(encoding="utf-8")) if self._state_file.exists()
                     else {"claimed": [], "held": {}, "alone": [], "retried": [], "first_steps": [], "phases": []})
            # A holder whose process is gone (it crashed, or was stopped) holds nothing any more,
            # and its compiling step (or phase) ended with it.
            state["held"] = {k: h for k, h in state["held"].items() if _alive(h["pid"])}
            for entry in state["first_steps"] + state["phases"]:
                if entry[-1] is None and not _alive(entry[1]):
                    entry[-1] = time.time()
            yield state
            for log in ("first_steps", "phases"):
                state[log] = state[log][-LOG_KEPT:]
            with atomic_write(self._state_file, encoding="utf-8") as f:
                json.dump(state, f)

    @staticmethod
    def _admit(state: dict, holder: str, entry: dict) -> None:
        """``holder`` holds ``entry`` from now; every holder remembers the most that other cases
        held beside it (an out-of-memory case asks whether they may have been the reason: a retry
        with no other case beside it can remove them, not the phases)."""
        state["held"][holder] = {**entry, "pid": os.getpid(), "most_beside": 0}
        cases = sum(h["bytes"] for h in state["held"].values() if h["case"] is not None)
        for h in state["held"].values():
            h["most_beside"] = max(h["most_beside"], cases - (h["bytes"] if h["case"] is not None else 0))

    def claim(self, cases: list[Case], estimate: Callable[[Case], int], holder: str) -> dict | str | None:
        """The next case for ``holder`` (a worker's name, one case at a time), in ``cases``' order:
        ``{"case", "retry_of"}`` once it fits beside what holds the GPU now (or nothing does);
        while it does not, a later one that fits (for ``head_wait_s`` at most, then ``WAIT`` until
        it fits); ``None`` when every case is taken. A case to be retried alone
        goes first, once no other case holds the GPU (phases may, as for any case), and runs with
        no other case beside it; until it has run, no other case is admitted. ``retry_of``: why it
        is retried, else None."""
        with self._state() as state:
            cases_held = [h for h in state["held"].values() if h["case"] is not None]
            held = sum(h["bytes"] for h in state["held"].values())

            def fits(case: Case) -> bool:  # a case larger than the budget runs with nothing beside it
                return held == 0 or held + estimate(case) <= self.memory_bytes

            if any(h["alone_retry"] for h in cases_held):
                return WAIT
            if state["alone"]:
                case, note = tuple(state["alone"][0]["case"]), state["alone"][0]["note"]
                if cases_held or not fits(case):
                    return WAIT
                state["alone"].pop(0)
            else:
                taken = {tuple(c) for c in state["claimed"]}
                waiting, note = [c for c in cases if tuple(c) not in taken], None
                if not waiting:
                    return None
                case = waiting[0]
                if not fits(case):
                    if state.get("head_since", [None])[0] != list(case):
                        state["head_since"] = [list(case), time.time()]
                    if time.time() - state["head_since"][1] >= self.head_wait_s:
                        return WAIT  # nothing more is admitted until it fits
                    case = next((c for c in waiting[1:] if fits(c)), None)
                    if case is None:
                        return WAIT
                state["claimed"].append(list(case))
            self._admit(state, holder, {"bytes": estimate(case), "case": list(case), "alone_retry": note is not None})
            return {"case": case, "retry_of": note}

    def retry_alone(self, case: Case, note: str) -> bool:
        """Queue ``case`` (out of memory beside others: ``note``) to run again with no other case
        beside it, once; False if it already had its retry."""
        with self._state() as state:
            if list(case) in state["retried"]:
                return False
            state["retried"].append(list(case))
            state["alone"].append({"case": list(case), "note": note})
            return True

    def hold(self, holder: str, nbytes: int) -> None:
        """``holder`` (the phases running beside the workers) holds ``nbytes`` until ``release``.
        A hold is not queued like a case: it must fit now, so the phases hold their largest need
        before the workers start and shrink it as they end. ValueError for a hold that grows
        past what fits."""
        with self._state() as state:
            others = sum(h["bytes"] for k, h in state["held"].items() if k != holder)
            grows = nbytes > state["held"].get(holder, {}).get("bytes", 0)
            if grows and others and others + nbytes > self.memory_bytes:
                raise ValueError(f"{holder} cannot hold {nbytes / 2**30:.1f} GiB beside "
                                 f"{others / 2**30:.1f} GiB of {self.memory_bytes / 2**30:.1f} GiB")
            self._admit(state, holder, {"bytes": nbytes, "case": None, "alone_retry": False})

    def release(self, holder: str) -> dict | None:
        """``holder``'s entry, no longer held: its ``most_beside`` bytes held by others meanwhile."""
        with self._state() as state:
            return state["held"].pop(holder, None)

    def first_step(self, holder: str) -> contextlib.AbstractContextManager[None]:
        """``holder``'s compiling step, remembered for the timed windows it runs beside."""
        return self._logged("first_steps", holder)

    def phase(self, name: str) -> contextlib.AbstractContextManager[None]:
        """A phase running on the GPU beside the workers, remembered like a first step."""
        return self._logged("phases", name)

    @contextlib.contextmanager
    def _logged(self, log: str, name: str) -> Iterator[None]:
        with self._state() as state:
            state[log].append([name, os.getpid(), time.time(), None])
        try:
            yield
        finally:
            with self._state() as state:
                for entry in state[log]:
                    if entry[0] == name and entry[-1] is None:
                        entry[-1] = time.time()

    @contextlib.contextmanager
    def timed_window(self, holder: str | None = None, until: float | None = None) -> Iterator[dict]:
        """The GPU's timed window, one holder at a time (blocks until it is free; TimeoutError if
        it is not by ``until``). The dict it yields is filled at its end: the window's [start,
        end], the other holders' first steps and the phases that ran at some time in it."""
        note: dict = {}
        with _flocked(self.directory / "timing.lock", until):
            start = time.time()
            try:
                yield note
            finally:
                end = time.time()
                with self._state() as state:
                    note.update(window=[start, end],
                                beside_first_steps=len([e for e in _overlaps(state["first_steps"], start, end)
                                                        if e[0] != holder]),
                                beside_phases=sorted({e[0] for e in _overlaps(state["phases"], start, end)}))

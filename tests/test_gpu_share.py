"""``bench/gpu_share.py``: the ledger by which the GPU check's steps workers share one GPU.

Real processes and real ``flock``s: cases claimed by processes at once are each taken once, a
holder whose process is gone frees its memory, and two processes' timed windows never overlap."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))
from gpu_share import WAIT, SharedGpu  # noqa: E402

GIB = 2**30
CASES = [("p", 64, "a"), ("p", 64, "b"), ("p", 128, "a")]
SIZES = {"a": 4 * GIB, "b": 8 * GIB}


def _estimate(case):
    return SIZES[case[2]]


def test_cases_are_taken_in_order_each_once_while_their_estimates_fit_together(tmp_path):
    gpu = SharedGpu(tmp_path, 13 * GIB)
    assert gpu.claim(CASES, _estimate, "w0") == {"case": ("p", 64, "a"), "retry_of": None}
    assert gpu.claim(CASES, _estimate, "w1") == {"case": ("p", 64, "b"), "retry_of": None}  # 4 + 8 GiB
    assert gpu.claim(CASES, _estimate, "w2") == WAIT  # 12 + 4 GiB > 13 GiB: it waits, in order
    assert gpu.release("w0")["most_beside"] == 8 * GIB
    assert gpu.claim(CASES, _estimate, "w2")["case"] == ("p", 128, "a")
    assert gpu.claim(CASES, _estimate, "w0") is None  # every case taken
    assert gpu.release("w1")["most_beside"] == 4 * GIB  # a, then the other a: never both


def test_a_case_that_does_not_fit_is_passed_over_for_later_ones_for_a_while_then_waited_for(tmp_path):
    gpu = SharedGpu(tmp_path / "a", 10 * GIB)
    assert gpu.claim(CASES, _estimate, "w0")["case"] == ("p", 64, "a")
    assert gpu.claim(CASES, _estimate, "w1")["case"] == ("p", 128, "a")  # b (8 GiB) does not fit beside 4
    assert gpu.claim(CASES, _estimate, "w2") == WAIT
    gpu.release("w0")
    gpu.release("w1")
    assert gpu.claim(CASES, _estimate, "w2")["case"] == ("p", 64, "b")
    strict = SharedGpu(tmp_path / "b", 10 * GIB, head_wait_s=0)  # b has waited long enough
    strict.claim(CASES, _estimate, "w0")
    assert strict.claim(CASES, _estimate, "w1") == WAIT  # the GPU drains for b
    strict.release("w0")
    assert strict.claim(CASES, _estimate, "w1")["case"] == ("p", 64, "b")


def test_the_phases_hold_memory_that_only_shrinks_and_a_case_over_the_budget_runs_alone(tmp_path):
    gpu = SharedGpu(tmp_path, 6 * GIB, head_wait_s=0)  # in order: no case passed over
    gpu.hold("phases", 3 * GIB)
    assert gpu.claim(CASES, _estimate, "w0") == WAIT  # 3 + 4 GiB > 6 GiB
    gpu.hold("phases", 2 * GIB)  # a phase ended
    assert gpu.claim(CASES, _estimate, "w0")["case"] == ("p", 64, "a")
    assert gpu.release("w0")["most_beside"] == 0  # the phases are no other case: a retry cannot remove them
    gpu.hold("phases", 1 * GIB)
    assert gpu.claim(CASES, _estimate, "w0") == WAIT  # 8 GiB: over the budget, so with nothing beside
    gpu.hold("phases", 0)  # the phases ended
    assert gpu.claim(CASES, _estimate, "w0")["case"] == ("p", 64, "b")
    assert gpu.claim(CASES, _estimate, "w1") == WAIT
    with pytest.raises(ValueError, match="phases cannot hold 4.0 GiB beside 8.0 GiB of 6.0 GiB"):
        gpu.hold("phases", 4 * GIB)  # a hold never overbooks: it must fit when it is made
    gpu.release("w0")
    assert gpu.claim(CASES, _estimate, "w1")["case"] == ("p", 128, "a")


def test_a_case_out_of_memory_beside_others_is_retried_once_with_no_other_case_beside_it(tmp_path):
    gpu = SharedGpu(tmp_path, 13 * GIB)
    gpu.hold("phases", 1 * GIB)
    gpu.claim(CASES, _estimate, "w0")
    gpu.claim(CASES, _estimate, "w1")  # b, beside a
    gpu.release("w1")
    assert gpu.retry_alone(("p", 64, "b"), "out of memory beside 5.0 GiB")
    assert not gpu.retry_alone(("p", 64, "b"), "again")  # one retry
    assert gpu.claim(CASES, _estimate, "w2") == WAIT  # w0's case still runs: nothing else starts
    gpu.release("w0")
    # The phases still hold their memory: the retry waits for cases, not for phases.
    assert gpu.claim(CASES, _estimate, "w2") == {"case": ("p", 64, "b"), "retry_of": "out of memory beside 5.0 GiB"}
    assert gpu.claim(CASES, _estimate, "w0") == WAIT  # 4 GiB would fit, but the retry runs alone
    gpu.release("w2")
    assert gpu.claim(CASES, _estimate, "w0")["case"] == ("p", 128, "a")


def test_memory_held_and_a_compiling_step_left_by_a_process_that_is_gone_are_over(tmp_path):
    crashed = (f"import os, sys; sys.path.insert(0, {str(BENCH)!r}); from gpu_share import SharedGpu; "
               f"gpu = SharedGpu(__import__('pathlib').Path({str(tmp_path)!r}), 1); gpu.hold('crashed', 2**40); "
               f"step = gpu.first_step('crashed'); step.__enter__(); os._exit(9)")  # dies in its compiling step
    subprocess.run([sys.executable, "-c", crashed])
    state = json.loads((tmp_path / "state.json").read_text())
    assert "crashed" in state["held"] and state["first_steps"][0][-1] is None
    gpu = SharedGpu(tmp_path, 13 * GIB)
    gpu.claim(CASES, _estimate, "w0")
    assert gpu.release("w0")["most_beside"] == 0
    with gpu.timed_window("w0") as note:
        pass
    assert note["beside_first_steps"] == 0


def test_a_timed_window_names_the_phases_and_other_workers_compiling_steps_that_ran_in_it(tmp_path):
    gpu = SharedGpu(tmp_path, 13 * GIB)
    with gpu.first_step("w0"):
        pass  # ended before the window
    with gpu.phase("equality"), gpu.first_step("w1"), gpu.timed_window("w2") as note:
        with gpu.first_step("w2"):
            pass  # its own: not beside itself
    assert note["beside_first_steps"] == 1 and note["beside_phases"] == ["equality"]
    assert note["window"][0] <= note["window"][1]
    with gpu.timed_window("w2") as quiet:
        pass
    assert quiet["beside_first_steps"] == 0 and quiet["beside_phases"] == []


CLAIMING_CHILD = """
import json, sys, time
from pathlib import Path
sys.path.insert(0, {bench!r})
from gpu_share import WAIT, SharedGpu
gpu = SharedGpu(Path({share!r}), 2**40)
cases = [("p", T, "v") for T in range(40)]
while time.time() < {start}:  # all claim at once
    time.sleep(0.01)
taken = []
while (claim := gpu.claim(cases, lambda case: 1, sys.argv[1])) is not None:
    taken.append(claim["case"])
    gpu.release(sys.argv[1])
print(json.dumps(taken))
"""


@pytest.mark.slow  # four Python processes, started together
def test_cases_claimed_by_processes_at_once_are_each_taken_once(tmp_path):
    child = CLAIMING_CHILD.format(bench=str(BENCH), share=str(tmp_path), start=time.time() + 2)
    processes = [subprocess.Popen([sys.executable, "-c", child, f"w{i}"], stdout=subprocess.PIPE, text=True)
                 for i in range(4)]
    taken = [tuple(c) for p in processes for c in json.loads(p.communicate(timeout=120)[0])]
    assert sorted(taken) == [("p", T, "v") for T in range(40)]


WINDOW_CHILD = """
import json, sys, time
from pathlib import Path
sys.path.insert(0, {bench!r})
from gpu_share import SharedGpu
gpu = SharedGpu(Path({share!r}), 1)
while time.time() < {start}:  # both ask for the window at once
    time.sleep(0.01)
with gpu.timed_window():
    entered = time.time()
    time.sleep(0.3)
    print(json.dumps([entered, time.time()]))
"""


@pytest.mark.slow  # two Python processes, started together
def test_two_processes_timed_windows_do_not_overlap(tmp_path):
    child = WINDOW_CHILD.format(bench=str(BENCH), share=str(tmp_path), start=time.time() + 2)
    processes = [subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True)
                 for _ in range(2)]
    (a0, a1), (b0, b1) = sorted(json.loads(p.communicate(timeout=60)[0]) for p in processes)
    assert a1 <= b0, "the second window began before the first ended"

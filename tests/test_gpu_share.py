"""``bench/gpu_share.py``: the ledger by which the GPU check's steps workers share one GPU.

Real processes and real ``flock``s: a holder whose process is gone frees its memory, and two
processes' timed windows never overlap."""

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
    assert gpu.claim(CASES, _estimate, "w0") == {"case": ("p", 64, "a"), "alone": True, "beside_bytes": 0,
                                                 "retry_of": None}
    assert gpu.claim(CASES, _estimate, "w1") == {"case": ("p", 64, "b"), "alone": False, "beside_bytes": 4 * GIB,
                                                 "retry_of": None}
    assert gpu.claim(CASES, _estimate, "w2") == WAIT  # 12 + 4 GiB > 13 GiB: it waits, in order
    gpu.release("w0")
    third = gpu.claim(CASES, _estimate, "w2")
    assert third["case"] == ("p", 128, "a") and third["beside_bytes"] == 8 * GIB
    assert gpu.claim(CASES, _estimate, "w0") is None  # every case taken


def test_a_phase_holding_memory_defers_cases_and_a_case_over_the_budget_runs_alone(tmp_path):
    gpu = SharedGpu(tmp_path, 6 * GIB)
    gpu.hold("train", 3 * GIB)
    assert gpu.claim(CASES, _estimate, "w0") == WAIT  # 3 + 4 GiB > 6 GiB
    gpu.release("train")
    assert gpu.claim(CASES, _estimate, "w0")["case"] == ("p", 64, "a")
    assert gpu.claim(CASES, _estimate, "w1") == WAIT  # 8 GiB: more than the budget, so only alone
    gpu.release("w0")
    assert gpu.claim(CASES, _estimate, "w1") == {"case": ("p", 64, "b"), "alone": True, "beside_bytes": 0,
                                                 "retry_of": None}


def test_a_case_out_of_memory_beside_others_is_retried_once_with_the_gpu_to_itself(tmp_path):
    gpu = SharedGpu(tmp_path, 13 * GIB)
    gpu.claim(CASES, _estimate, "w0")
    gpu.claim(CASES, _estimate, "w1")  # b, beside a
    gpu.release("w1")
    assert gpu.retry_alone(("p", 64, "b"), "out of memory beside 4.0 GiB")
    assert not gpu.retry_alone(("p", 64, "b"), "again")  # one retry
    assert gpu.claim(CASES, _estimate, "w2") == WAIT  # w0 still holds the GPU: nothing else starts
    gpu.release("w0")
    assert gpu.claim(CASES, _estimate, "w2") == {"case": ("p", 64, "b"), "alone": True, "beside_bytes": 0,
                                                 "retry_of": "out of memory beside 4.0 GiB"}
    assert gpu.claim(CASES, _estimate, "w0") == WAIT  # 4 GiB would fit, but the retry runs alone
    gpu.release("w2")
    assert gpu.claim(CASES, _estimate, "w0")["case"] == ("p", 128, "a")


def test_memory_held_by_a_process_that_is_gone_is_free_again(tmp_path):
    holder = (f"import sys; sys.path.insert(0, {str(BENCH)!r}); from gpu_share import SharedGpu; "
              f"SharedGpu(__import__('pathlib').Path({str(tmp_path)!r}), 1).hold('crashed', 2**40)")
    subprocess.run([sys.executable, "-c", holder], check=True)
    assert "crashed" in json.loads((tmp_path / "state.json").read_text())["held"]
    assert SharedGpu(tmp_path, 13 * GIB).claim(CASES, _estimate, "w0")["beside_bytes"] == 0


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
    time.sleep(0.5)
    print(json.dumps([entered, time.time()]))
"""


@pytest.mark.slow  # two Python processes, started together
def test_two_processes_timed_windows_do_not_overlap(tmp_path):
    child = WINDOW_CHILD.format(bench=str(BENCH), share=str(tmp_path), start=time.time() + 3)
    processes = [subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True)
                 for _ in range(2)]
    (a0, a1), (b0, b1) = sorted(json.loads(p.communicate(timeout=60)[0]) for p in processes)
    assert a1 <= b0, "the second window began before the first ended"

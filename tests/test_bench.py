"""``bench/throughput.py`` runs end to end and writes the JSON that scripts read.

Not a timing test: a tiny model for one step per contestant, checking the report's
structure and the bad-input messages, so the benchmark cannot rot between the
sessions that run it for real.
"""

import json
import math
import shutil
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import throughput  # noqa: E402

from variants import available_variants  # noqa: E402

QUICK = ["--preset", "tiny", "--seq-len", "32", "--batch-size", "2", "--steps", "1", "--rounds", "2",
         "--warmup", "1", "--device", "cpu"]


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.mark.slow
def test_throughput_writes_the_ratios_scripts_read(tmp_path, capsys):
    pytest.importorskip("transformers")
    out = tmp_path / "bench.json"
    report = throughput.main([*QUICK, "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    # Structure only: relations between timings (e.g. the matmul-only ceiling above the
    # measured throughput) hold on an idle machine but not on a loaded test runner.
    assert _positive(report["baseline_vs_hf"])
    assert set(report["step_time_vs_baseline"]) == set(available_variants())
    assert all(_positive(r) for r in report["step_time_vs_baseline"].values())
    assert report["step_time_vs_baseline"]["baseline"] == 1.0
    case = report["cases"][0]
    # A variant that needs several heads runs with two, next to a baseline of that shape.
    multi_head = [v for v in available_variants()
                  if case["results"][v]["compared_with"] != "baseline"]
    assert set(case["results"]) == {*available_variants(), throughput.HF_NAME,
                                    *(case["results"][v]["compared_with"] for v in multi_head)}
    for row in case["results"].values():
        assert _positive(row["tokens_per_s"]) and _positive(row["step_s"])
    for key in ("gemm_s_per_step", "gemm_ceiling_tokens_per_s", "baseline_of_gemm_ceiling"):
        assert _positive(case[key]), key
    printed = capsys.readouterr().out
    assert "| baseline |" in printed and "baseline tokens/s / hf_llama tokens/s" in printed
    assert "matmul-only ceiling" in printed


@pytest.mark.slow
def test_every_variant_compiled_in_one_process_runs_compiled():
    """The throughput bench compiles every contestant in one process; none may fall back to eager."""
    import torch
    from torch._dynamo.testing import CompileCounter

    from attnlab.model import build_model
    from conftest import supported_config

    torch._dynamo.reset()
    counter = CompileCounter()
    with torch._dynamo.config.patch(recompile_limit=torch._dynamo.config.recompile_limit):  # restored after
        throughput.allow_compiled_models(len(available_variants()))
        for n, variant in enumerate(available_variants(), start=1):
            model = build_model(supported_config(variant))
            model.compile_blocks(backend=counter)
            model(torch.randint(0, 100, (2, 16))).sum().backward()
            assert counter.frame_count == n, variant  # compiled, not run eager past the limit
    torch._dynamo.reset()


def test_flex_rows_are_refused_on_cpu_with_the_reason():
    with pytest.raises(SystemExit, match="--flex qk_scale: FlexAttention has no CPU backward"):
        throughput.main([*QUICK, "--no-hf", "--flex", "qk_scale"])


def test_flex_rows_at_a_head_size_flex_cannot_compile_are_refused_before_any_device_work():
    # Refused before a model is built, so --device cuda needs no GPU here.
    with pytest.raises(SystemExit, match="--flex qk_scale: model.attn_kernel=flex cannot train variant 'qk_scale' "
                                         "at head_size=620 on a GPU"):
        throughput.main(["--preset", "seed100m", "--device", "cuda", "--no-hf", "--flex", "qk_scale"])
    assert throughput._flex_refusal("qk_scale", "gqa100m") is None  # heads of 64


@pytest.mark.slow
def test_the_gpu_check_runs_on_cpu_in_smoke_mode_and_writes_its_report(tmp_path, corpus):
    import gpu_check
    from test_training import tiny_overrides

    # The train phase as on a GPU, compiled by Inductor (where a C++ compiler lets it build CPU
    # kernels; else uncompiled), on a tiny model and corpus.
    inductor = shutil.which("g++") is not None or shutil.which("c++") is not None
    train = [o for o in tiny_overrides(tmp_path, corpus) if not o.startswith("results_dir=")]
    train += [f"trainer.compile={str(inductor).lower()}", "trainer.max_steps=6", "variant=qk_scale"]
    out = tmp_path / "out"
    args = ["--device", "cpu", "--presets", "tiny", "--seq-lens", "64", "--tokens-per-step", "128", "--steps", "1",
            "--no-compile", "--precision", "32-true", "--phases", "equality", "train", "steps", "--variants",
            "baseline", "qk_scale", "talking_heads", "--out", str(out), "--train-overrides", *train]
    report = gpu_check.main(args)
    assert json.loads((out / "gpu_check.json").read_text())["steps"] == json.loads(json.dumps(report["steps"]))
    # Only the report: the train phase's scratch run directory lived in the temporary directory.
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.json", "gpu_check.md"]
    # each phase in its own process
    # The equality phase's processes side by side, each a share of the variants.
    assert report["processes"] == {"equality": ["process 1/2: exit 0", "process 2/2: exit 0"], "train": ["exit 0"],
                                   "steps": ["worker 0: exit 0"]}
    trained = report["train"]
    assert trained["returncode"] == 0 and trained["steps"] == 6 and len(trained["val_loss"]) == 3
    assert _positive(trained["tokens_per_s"]) and trained["mfu"] is None  # a CPU has no peak FLOP/s
    graphs = trained["compiled_graphs_by_validation"]
    if inductor:
        assert len(graphs) == 3 and graphs[0] > 0 and graphs == [graphs[0]] * 3
    else:
        assert graphs == []  # an uncompiled run counts nothing
    assert [r["variant"] for r in report["steps"]] == ["baseline", "qk_scale", "talking_heads"]
    assert all(_positive(r["tokens_per_s"]) and "error" not in r for r in report["steps"])
    assert {r["backend"] for r in report["steps"]} == {"cpu-flash", "math", "explicit"}
    # torch's own choice, seen in a forward, against the plan's (the explicit kernel calls no SDPA).
    assert [(r.get("observed_backend"), r.get("backend_agrees")) for r in report["steps"]] == [
        ("cpu-flash", True), ("no fused SDPA op", True), (None, None)]
    assert report["not_run"] == [] and report["cuda_tests"] is None
    # sdpa against the explicit kernel; talking_heads has only the explicit one (flex: CUDA only).
    assert [(e["variant"], e["kernel"], e["ok"]) for e in report["equality"]] == [
        ("baseline", "sdpa", True), ("qk_scale", "sdpa", True), ("talking_heads", None, True)]
    table = (out / "gpu_check.md").read_text()
    assert "| tiny | 64 | qk_scale | sdpa (math) |" in table and "Fused = explicit (2 variant-kernel pairs" in table
    assert "SDPA backend as planned in 2 of 2 cases\n" in table
    assert (f"train.py: `python train.py {' '.join(train)}`: exit 0 in {trained['seconds']:.0f} s; 6 steps; "
            f"validation loss ") in table
    if inductor:
        assert f"graphs compiled by each validation's end {graphs[0]:.0f}, {graphs[0]:.0f}, {graphs[0]:.0f} (no " \
               "recompile after the first)" in table


@pytest.mark.slow
def test_the_gpu_check_keeps_what_it_finished_when_its_deadline_comes(tmp_path):
    """A deadline that leaves no time for a step case: every case is listed as not run, and the
    report is still written."""
    import gpu_check

    args = ["--device", "cpu", "--presets", "tiny", "--seq-lens", "64", "--tokens-per-step", "128", "--steps", "1",
            "--no-compile", "--precision", "32-true", "--phases", "steps", "--variants", "baseline", "qk_scale",
            "--deadline-s", str(gpu_check.CASE_RESERVE_S - 5), "--out", str(tmp_path)]
    report = gpu_check.main(args)
    assert report["steps"] == [] and report["not_run"] == [("tiny", 64, "baseline"), ("tiny", 64, "qk_scale")]
    table = (tmp_path / "gpu_check.md").read_text()
    assert "Not run (not reached by the deadline, or no worker left: see the phase's processes): " \
           "tiny/T=64/baseline, tiny/T=64/qk_scale" in table


def test_the_gpu_check_measures_one_variant_per_attention_path_first_and_names_a_case_it_was_stopped_in(
        tmp_path, monkeypatch):
    import argparse

    import gpu_check

    order = gpu_check.variant_list(argparse.Namespace(variants=None))
    assert order[:len(gpu_check.FIRST_VARIANTS)] == list(gpu_check.FIRST_VARIANTS)
    assert sorted(order) == sorted(gpu_check.available_variants())
    # A steps process that ends inside a case (its limit, a crash) leaves the case it started.
    part = tmp_path / "part-steps.jsonl"

    def stopped_inside(*case_and_args):
        raise KeyboardInterrupt

    monkeypatch.setattr(gpu_check, "run_case", stopped_inside)
    monkeypatch.setattr(gpu_check.time, "time", lambda: 1000.0)
    args = argparse.Namespace(presets=["gqa100m"], seq_lens=[2048], variants=["qk_scale", "baseline"], worker=3,
                              share_bytes=2**40, tokens_per_step=16_384, precision="bf16-mixed")
    with pytest.raises(KeyboardInterrupt):
        gpu_check.steps_phase(args, gpu_check.torch.device("cpu"), part, until=2000.0)
    monkeypatch.setattr(gpu_check.time, "time", lambda: 1030.0)
    stopped = gpu_check.stopped_cases(part, [])
    assert stopped == [{"case": ("gqa100m", 2048, "baseline"), "seconds": 30.0, "retry": False}]  # baseline first
    row = {"preset": "gqa100m", "seq_len": 2048, "variant": "baseline"}
    row_case = ["gqa100m", 2048, "qk_scale"]
    assert gpu_check.stopped_cases(part, [row]) == []  # it finished: its row says how
    # A replacement worker has a name of its own: its case does not hide the one its predecessor
    # was stopped in; a started-file being replaced reads as nothing rather than failing the report.
    gpu_check.started_file(part, 4).write_text(json.dumps({"case": row_case, "started": 1010.0}))
    gpu_check.started_file(part, 5).write_text("")
    assert gpu_check.stopped_cases(part, [row]) == [{"case": ("gqa100m", 2048, "qk_scale"), "seconds": 20.0,
                                                     "retry": False}]
    # The case it was stopped in holds no memory any more: the next worker goes on with the next case.
    shared = gpu_check.SharedGpu(gpu_check.share_dir_of(part), 1)
    shared.claim([("gqa100m", 2048, "qk_scale")], lambda case: 2**30, "worker 4")
    assert shared.release("worker 4")["most_beside"] == 0
    report = {"environment": {"device": "x", "torch": "y"}, "precision": "bf16-mixed", "compiled": True,
              "command": "c", "seconds": 1, "steps": [], "stopped_in": stopped,
              "not_run": [("gqa100m", 2048, "baseline"), ("gqa100m", 2048, "qk_scale")], "equality": [],
              "processes": {}, "phases": ["steps"]}
    table = gpu_check.markdown(report)
    assert "A steps worker stopped in gqa100m/T=2048/baseline, 30 s after the case started" in table
    assert "worker left: see the phase's processes): gqa100m/T=2048/qk_scale\n" in table  # not where it stopped


@pytest.mark.slow
def test_the_gpu_check_writes_its_report_after_every_phase(tmp_path, monkeypatch):
    """A check stopped from outside (the device's time limit) keeps the phases it finished."""
    import gpu_check

    def stopped_from_outside(until):
        raise KeyboardInterrupt

    monkeypatch.setattr(gpu_check, "cuda_tests", stopped_from_outside)
    args = ["--device", "cpu", "--presets", "tiny", "--seq-lens", "64", "--tokens-per-step", "128", "--steps", "1",
            "--no-compile", "--precision", "32-true", "--phases", "equality", "cuda-tests", "--variants", "baseline",
            "--out", str(tmp_path)]
    with pytest.raises(KeyboardInterrupt):
        gpu_check.main(args)
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert [(e["variant"], e["kernel"], e["ok"]) for e in report["equality"]] == [("baseline", "sdpa", True)]
    assert "Fused = explicit (1 variant-kernel pairs" in (tmp_path / "gpu_check.md").read_text()


def test_the_gpu_check_refuses_cuda_without_a_gpu_naming_the_smoke_run(capsys):
    import gpu_check

    if gpu_check.torch.cuda.is_available():
        pytest.skip("a CUDA device is visible")
    with pytest.raises(SystemExit):
        gpu_check.parse_args([])
    assert "no CUDA device is visible" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--device", "cpu", "--workers", "0"])
    assert "--workers 0: at least 1" in capsys.readouterr().err


def test_the_gpu_check_restarts_its_process_after_a_cuda_error_but_not_after_an_out_of_memory():
    import gpu_check

    assert gpu_check.is_cuda_error(RuntimeError("CUDA error: an illegal memory access was encountered"))
    assert not gpu_check.is_cuda_error(gpu_check.torch.OutOfMemoryError("CUDA out of memory. Tried to allocate"))
    assert not gpu_check.is_cuda_error(ValueError("CUDA error"))
    assert gpu_check.is_cuda_error(RuntimeError("Triton Error [CUDA]: an illegal memory access was encountered"))
    # expandable segments map memory through the driver: a fault can surface there first
    assert gpu_check.is_cuda_error(RuntimeError("CUDA driver error: an illegal memory access was encountered"))
    assert gpu_check.is_cuda_error(RuntimeError("cuDNN error: CUDNN_STATUS_EXECUTION_FAILED"))

    def raised_from(cause: BaseException) -> BaseException:
        """As Inductor re-raises what fails inside a compile."""
        try:
            try:
                raise cause
            except BaseException as err:
                raise RuntimeError("backend='inductor' raised: ...") from err
        except RuntimeError as wrapped:
            return wrapped

    assert gpu_check.is_cuda_error(raised_from(RuntimeError("CUDA error: misaligned address")))
    oom = raised_from(gpu_check.torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert gpu_check.is_out_of_memory(oom) and not gpu_check.is_cuda_error(oom)
    assert not gpu_check.is_out_of_memory(raised_from(ValueError("shapes differ")))


FLAKY_CHILD = """
import json, os, pathlib, signal, sys
part = pathlib.Path(sys.argv[sys.argv.index("--part") + 1])
done = part.read_text().splitlines() if part.exists() else []
code = {exit_codes}[len(done)]
if code == "crash":  # in a variant, before its row: its note, then a signal
    note = {"case": f"v{len(done)}", "started": 0, "pid": os.getpid()}
    (part.parent / f"{part.stem}.started-0").write_text(json.dumps(note))
    os.kill(os.getpid(), signal.SIGKILL)
if code != "no row":
    part.write_text("".join(line + "\\n" for line in [*done, json.dumps({"variant": f"v{len(done)}"})]))
sys.exit(1 if code == "no row" else code)
"""
CRASHED = {"variant": "v1", "kernel": "?", "ok": False, "error": "its process ended with exit -9 in this variant"}


@pytest.mark.parametrize("exit_codes, runs, rows", [
    ([3, 3, 0], ["exit 3", "exit 3", "exit 0"], [{"variant": "v0"}, {"variant": "v1"}, {"variant": "v2"}]),
    ([3, "crash", 0], ["exit 3", "exit -9", "exit 0"], [{"variant": "v0"}, CRASHED, {"variant": "v2"}]),
    ([3, "no row"], ["exit 3", "exit 1"], [{"variant": "v0"}])], ids=["cuda-errors", "crash", "no-progress"])
def test_the_gpu_check_starts_a_new_process_after_a_cuda_error_or_a_crash_until_the_phase_ends(
        tmp_path, exit_codes, runs, rows):
    """A phase's process that ends in a CUDA error (CUDA_ERROR_EXIT) or a crash after progress is
    followed by a new one, which goes on from the rows on disk; a crashed one's variant gets a row
    naming it, from its note. A process that ends without progress ends the phase."""
    import time

    import gpu_check

    assert gpu_check.CUDA_ERROR_EXIT == 3
    child = tmp_path / "child.py"
    child.write_text(FLAKY_CHILD.replace("{exit_codes}", repr(exit_codes)))
    part = tmp_path / "part.jsonl"
    outcome = gpu_check.run_phase_process("equality", [], part, time.time() + 60, script=child)
    assert outcome["processes"] == runs
    assert outcome["rows"] == rows
    assert not list(tmp_path.glob("part.started-*"))


def test_a_kernel_that_fails_in_the_equality_check_gets_its_own_row(monkeypatch):
    """The kernel's error is its row; the explicit reference's rows stand. An error that spoils
    the CUDA context is raised after its row, so that the phase starts a new process."""
    import gpu_check

    build = gpu_check.build_model

    def failing(config):
        if config.attn_kernel == "sdpa":
            raise failure
        return build(config)

    monkeypatch.setattr(gpu_check, "build_model", failing)
    failure = ValueError("no kernel for this shape")
    rows = []
    assert gpu_check.equality("qk_scale", gpu_check.torch.device("cpu"), "32-true", rows) is rows
    assert rows == [{"variant": "qk_scale", "kernel": "sdpa", "ok": False,
                     "error": "ValueError: no kernel for this shape"}]
    monkeypatch.setattr(gpu_check, "is_cuda_error", lambda err: True)  # as a device-side assert would be
    monkeypatch.setattr(gpu_check, "supported_kernels", lambda block, config: ["explicit", "sdpa", "later"])
    rows = []
    with pytest.raises(ValueError):
        gpu_check.equality("qk_scale", gpu_check.torch.device("cpu"), "32-true", rows)
    # The kernels after it would run in a spoilt process: named as not run (its phase goes on with
    # the next variant in a new process).
    assert rows[1:] == [{"variant": "qk_scale", "kernel": "later", "ok": False,
                         "error": "not run: the CUDA error in sdpa spoilt the process"}]
    assert [r["kernel"] for r in rows] == ["sdpa", "later"]


def test_a_steps_case_may_wait_for_the_whole_train_phase_before_it_is_taken_for_hung():
    import gpu_check

    default = gpu_check.parse_args(["--device", "cpu"])
    assert gpu_check.case_limit_s(default) == gpu_check.CASE_LIMIT_S >= default.train_s + gpu_check.CASE_BEYOND_TRAIN_S
    longer = gpu_check.parse_args(["--device", "cpu", "--train-s", "400"])
    assert gpu_check.case_limit_s(longer) == 400 + gpu_check.CASE_BEYOND_TRAIN_S
    no_train = gpu_check.parse_args(["--device", "cpu", "--train-s", "400", "--phases", "equality", "steps"])
    assert gpu_check.case_limit_s(no_train) == gpu_check.CASE_LIMIT_S


@pytest.mark.slow  # two sleeping children, killed after 2 s
def test_a_check_stopped_while_phases_run_side_by_side_kills_their_children():
    """SIGTERM or Ctrl-C reaches the check's main thread as an exception while threads wait on
    the phases' children (the equality processes, the test files): those are killed, not
    waited for until their time limits."""
    import signal

    import gpu_check

    class Stopped(Exception):
        pass

    def stop(signum, frame):
        raise Stopped

    ended = []
    sleeper = [sys.executable, "-c", "import time; time.sleep(20)"]

    def job() -> None:
        ended.append(gpu_check.run_child(sleeper, 120)[0])

    previous = signal.signal(signal.SIGALRM, stop)
    try:
        signal.setitimer(signal.ITIMER_REAL, 2.0)
        with pytest.raises(Stopped):
            gpu_check.side_by_side([job, job])
        assert ended == [-signal.SIGKILL] * 2  # killed, not slept out (exit 0)
        assert gpu_check.run_child(sleeper, 120) == (None, None, None)  # and no child is started after
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        gpu_check.STOPPING.clear()


SHARD_CHILD = """
import json, pathlib, sys
part = pathlib.Path(sys.argv[sys.argv.index("--part") + 1])
index, count = (int(x) for x in sys.argv[sys.argv.index("--shard") + 1].split("/"))
with part.open("a") as f:
    for variant in ["a", "b", "c", "d", "e"][index::count]:
        f.write(json.dumps({"variant": variant, "shard": index}) + "\\n")
"""


def test_the_equality_phase_shares_the_variants_out_between_processes_side_by_side(tmp_path):
    import gpu_check

    child = tmp_path / "child.py"
    child.write_text(SHARD_CHILD)
    parts = [tmp_path / f"part-equality-{i}.jsonl" for i in range(2)]
    rows, processes = gpu_check.equality_processes([], parts, time.time() + 60, ["e", "d", "c", "b", "a"], child)
    assert processes == ["process 1/2: exit 0", "process 2/2: exit 0"]
    # Each process its share, in a part of its own; the rows in the order of the variants given.
    assert rows == [{"variant": v, "shard": s} for v, s in (("e", 0), ("d", 1), ("c", 0), ("b", 1), ("a", 0))]
    assert [len(gpu_check.read_rows(part)) for part in parts] == [3, 2]


FLAKY_WORKER = """
import json, os, pathlib, subprocess, sys, time
part = pathlib.Path(sys.argv[sys.argv.index("--part") + 1])
worker = sys.argv[sys.argv.index("--worker") + 1]
done = part.read_text().splitlines() if part.exists() else []
row = {"preset": "p", "seq_len": len(done), "variant": "v", "case_window": [0, time.time()]}
part.write_text("".join(line + "\\n" for line in [*done, json.dumps(row)]))
code = {exit_codes}[len(done)]
if code == "stuck":  # in a case (one with no row) far longer than a case takes
    started = {"case": ["p", 99, "v"], "started": time.time(), "pid": os.getpid()}
    (part.parent / f"{part.stem}.started-{worker}").write_text(json.dumps(started))
    time.sleep(120)
if code == "hang":  # a case past the deadline, with a compile process of its own
    helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    (part.parent / "helper.pid").write_text(str(helper.pid))
    time.sleep(120)
if code < 0:
    os.kill(os.getpid(), -code)
sys.exit(code)
"""


def _gone(pid: int) -> bool:
    try:
        return " Z " in Path(f"/proc/{pid}/stat").read_text()  # a zombie is gone, awaiting its reaper
    except FileNotFoundError:
        return True


@pytest.mark.slow  # a Python process per worker
@pytest.mark.parametrize("exit_codes, runs", [
    ([3, -9, 1, 0], ["worker 0: exit 3", "worker 1: exit -9", "worker 2: exit 1"]),  # 2 replacements per worker
    ([1, 0], ["worker 0: exit 1", "worker 1: exit 0"]),  # an error its case did not catch
    (["stuck", 0], ["worker 0: stopped after 1 s in one case", "worker 1: exit 0"])])
def test_the_steps_pool_replaces_a_worker_that_ended_other_than_by_running_out_of_cases(tmp_path, exit_codes,
                                                                                         runs):
    import gpu_check

    child = tmp_path / "worker.py"
    child.write_text(FLAKY_WORKER.replace("{exit_codes}", repr(exit_codes)))
    part = tmp_path / "part.jsonl"
    outcome = gpu_check.StepsPool([], part, time.time() + 120, 1, script=child, case_limit_s=1).run()
    assert outcome["processes"] == runs
    assert [r["seq_len"] for r in outcome["rows"]] == list(range(len(runs)))


@pytest.mark.slow  # the pool's grace after the deadline
def test_the_steps_pool_stops_a_worker_past_the_deadline_with_its_compile_processes(tmp_path):
    import gpu_check

    child = tmp_path / "worker.py"
    child.write_text(FLAKY_WORKER.replace("{exit_codes}", repr(["hang"])))
    outcome = gpu_check.StepsPool([], tmp_path / "part.jsonl", time.time() + 1, 1, script=child).run()
    assert outcome["processes"] == ["worker 0: stopped at the deadline"]
    helper = int((tmp_path / "helper.pid").read_text())
    deadline = time.time() + 10
    while not _gone(helper) and time.time() < deadline:
        time.sleep(0.1)
    assert _gone(helper), "the worker's own child process outlived it"


@pytest.mark.slow
def test_the_gpu_check_workers_share_the_device_timing_one_at_a_time_within_its_memory(tmp_path):
    """Two workers: every case once, no two timed windows overlapping; with memory for one case
    at a time, no two cases overlapping either."""
    import gpu_check

    args = ["--device", "cpu", "--presets", "tiny", "--seq-lens", "64", "128", "--tokens-per-step", "128",
            "--steps", "2", "--no-compile", "--precision", "32-true", "--phases", "steps", "--workers", "2",
            "--variants", "baseline", "qk_scale", "talking_heads"]

    def disjoint(windows) -> bool:
        windows = sorted(windows)
        return all(end <= next_start for (_, end), (next_start, _) in zip(windows, windows[1:]))

    shared = gpu_check.main([*args, "--out", str(tmp_path / "shared")])
    assert [gpu_check.case_of(r) for r in shared["steps"]] == gpu_check.cases(
        ["tiny"], [64, 128], ["baseline", "qk_scale", "talking_heads"])
    assert all("error" not in r and _positive(r["tokens_per_s"]) for r in shared["steps"])
    assert disjoint([r["window"] for r in shared["steps"]])
    assert sorted(shared["processes"]["steps"]) == ["worker 0: exit 0", "worker 1: exit 0"]
    assert sorted(p.name for p in (tmp_path / "shared").iterdir()) == ["gpu_check.json", "gpu_check.md"]
    one_at_a_time = gpu_check.main([*args, "--memory-gib", "0.001", "--out", str(tmp_path / "alone")])
    assert len(one_at_a_time["steps"]) == 6
    assert disjoint([r["case_window"] for r in one_at_a_time["steps"]])
    assert all(r["most_beside_bytes"] == 0 and r["beside_first_steps"] == 0 for r in one_at_a_time["steps"])


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                    reason="Inductor's CPU backend needs a C++ compiler")
def test_the_compile_time_bench_compiles_both_ways_in_fresh_processes(tmp_path):
    import compile_time

    out = tmp_path / "compile.json"
    report = compile_time.main(["--preset", "tiny", "--seq-len", "16", "--variants", "baseline", "--steps", "2",
                                "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    assert sorted(r["mode"] for r in report["rows"]) == ["blocks", "whole"]
    assert all("error" not in r and r["first_step_s"] > r["step_s"] > 0 for r in report["rows"])
    assert _positive(report["whole_over_blocks"]["baseline"])
    assert _positive(report["step_blocks_over_whole"]["baseline"])


@pytest.mark.slow
def test_the_gpu_check_train_phase_reports_a_failed_or_stopped_run_and_removes_its_scratch(tmp_path):
    import gpu_check

    failed = gpu_check.train_phase(["trainer.max_steps=0"], time.time() + 120, tmp_path)
    assert failed["returncode"] not in (0, None) and "error" not in failed
    assert "trainer.max_steps must be a positive integer, got 0" in failed["output_tail"]
    assert gpu_check.train_line(failed).startswith(
        f"train.py: `python train.py trainer.max_steps=0`: exit {failed['returncode']} in ")
    stopped = gpu_check.train_phase(["trainer=cpu"], time.time() + 1, tmp_path)
    assert stopped["returncode"] is None and "error" not in stopped
    assert "stopped at its limit after" in gpu_check.train_line(stopped)
    assert list(tmp_path.iterdir()) == []


def test_the_cuda_tests_progress_counts_the_outcomes_pytest_v_printed():
    import gpu_check

    verbose = ("tests/test_plan.py::test_estimate_is_within_tolerance_of_a_measured_cuda_step[baseline] PASSED [ 7%]\n"
               "tests/test_plan.py::test_estimate_is_within_tolerance_of_a_measured_cuda_step[talking_heads] FAILED "
               "[ 14%]\n"
               "tests/test_flex_kernel.py::test_flex_gradients_match_explicit_on_cuda[alibi] PASSED [ 21%]\n"
               "tests/test_flex_kernel.py::test_flex_gradients_match_explicit_on_cuda[sigmoid_attn] SKIPPED (no) "
               "[ 28%]\n")
    assert gpu_check.tests_so_far(verbose) == "2 passed, 1 failed, 1 skipped"


@pytest.mark.slow  # a pytest subprocess per file, and FlexAttention's file collected on its own
def test_the_cuda_tests_phase_runs_each_file_in_a_pytest_of_its_own_and_sums_them_up():
    import re
    import shlex
    import subprocess

    import gpu_check
    import torch

    done = gpu_check.cuda_tests(time.time() + 300)
    selections = gpu_check.cuda_test_selections()
    assert done["returncode"] == 0 and len(done["files"]) == len(selections) == len(gpu_check.CUDA_TESTS) + 1
    outcome = "passed" if torch.cuda.is_available() else "skipped"  # or ran, on a GPU
    selected = {}
    for (path, keyword), (name, run) in zip(selections, done["files"].items()):
        assert name.startswith(Path(path).name) and run["command"].endswith(f"-m '' -k {shlex.quote(keyword)} {path}")
        counts = {kind: int(n) for n, kind in re.findall(r"(\d+) (passed|skipped|failed|deselected)", run["summary"])}
        assert counts.get(outcome, 0) > 0, run["summary"]
        selected[path] = selected.get(path, 0) + counts.get("passed", 0) + counts.get("skipped", 0)
    # The split file's two halves select every test named *cuda* in it, each once.
    split = next(iter(gpu_check.SPLIT_CUDA_TESTS))
    listed = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "", "-k", "cuda", split],
                            cwd=gpu_check.ROOT, capture_output=True, text=True, timeout=300).stdout
    assert selected[split] == sum(1 for line in listed.splitlines() if "::" in line) > 0


@pytest.mark.slow  # a pytest subprocess, stopped
def test_the_cuda_tests_phase_stopped_before_any_test_says_so():
    import gpu_check

    stopped = gpu_check.cuda_tests(time.time() + 0.5)  # pytest cannot even start in that time
    assert stopped["returncode"] is None
    assert stopped["summary"] == "; ".join(f"{name}: stopped at its limit of 1 s after no test"
                                           for name in stopped["files"])
    assert len(stopped["files"]) == len(gpu_check.cuda_test_selections())


def test_the_memory_the_gpu_check_holds_for_each_phase_covers_the_plans_estimate_of_it():
    """The steps workers keep this much free while a phase runs beside them: the estimate of what
    that phase trains, with room for the estimate's error."""
    import dataclasses

    import gpu_check
    from attnlab.config import ModelConfig
    from attnlab.params import variant_at_preset
    from attnlab.plan import estimate_peak_bytes, kernel_plan

    def estimate(config: ModelConfig, T: int, B: int) -> float:
        plan = kernel_plan(config, T, B, "bf16-mixed", "cuda", cudnn_first=True)
        return estimate_peak_bytes(config, T, B, "bf16-mixed", plan, "cuda") / 2**30

    train = dict(o.split("=", 1) for o in gpu_check.TRAIN_OVERRIDES)
    T, B = int(train["trainer.seq_len"]), int(train["trainer.batch_size"])
    config = dataclasses.replace(variant_at_preset(train["model"], train["variant"])[0], block_size=T)
    assert 1.25 * estimate(config, T, B) <= gpu_check.PHASE_RESERVE_GIB["train"]
    # The equality phase's processes side by side, each training the equality model at most; the
    # CUDA-only tests' files side by side, none training more than tests/test_plan.py's largest.
    equality = ModelConfig(**gpu_check.EQUALITY_SHAPE, variant="talking_heads")
    assert gpu_check.EQUALITY_PROCESSES * 1.25 * estimate(equality, 256, 2) <= gpu_check.PHASE_RESERVE_GIB["equality"]
    from test_plan import SMALL
    largest = estimate(ModelConfig(**{**SMALL, "variant": "talking_heads"}), 256, 8)
    assert len(gpu_check.cuda_test_selections()) * 1.25 * largest <= gpu_check.PHASE_RESERVE_GIB["cuda-tests"]


def test_a_gpu_check_case_too_large_for_the_shared_memory_halves_its_batch_until_it_fits():
    """talking_heads at gqa100m, T=4096 and the default 16,384 tokens a step is estimated above an
    80 GiB GPU's share: it runs at the largest halved batch that fits, and its row says so; a case
    that fits keeps its batch."""
    import argparse

    import gpu_check

    share = int(gpu_check.MEMORY_SHARE * 80 * 2**30)
    args = argparse.Namespace(tokens_per_step=16_384, precision="bf16-mixed", share_bytes=share)
    cuda = gpu_check.torch.device("cuda")  # planned only: nothing runs on it
    config, batch, plan, _ = gpu_check.planned("gqa100m", 4096, "talking_heads", args, cuda)
    unshared = argparse.Namespace(**{**vars(args), "share_bytes": None})
    full = gpu_check.planned("gqa100m", 4096, "talking_heads", unshared, cuda)
    assert full[1] == 4 and gpu_check.estimate_peak_bytes(config, 4096, 4, "bf16-mixed", full[2], "cuda") > share
    assert batch == 2 and gpu_check.case_estimate(("gqa100m", 4096, "talking_heads"), args, cuda) <= share
    assert gpu_check.planned("gqa100m", 4096, "baseline", args, cuda)[1] == 4
    row = {"preset": "gqa100m", "seq_len": 4096, "variant": "talking_heads", "batch_size": 2, "full_batch_size": 4,
           "kernel": "explicit", "backend": "explicit"}
    report = {"environment": {"device": "x", "torch": "y"}, "precision": "bf16-mixed", "compiled": True,
              "command": "c", "seconds": 1, "steps": [row], "not_run": [], "equality": [], "processes": {},
              "phases": ["steps"]}
    assert "(batch 2, not 4: the estimate at 4 exceeded the memory the cases share)" in gpu_check.markdown(report)


def test_a_retried_case_s_row_replaces_its_out_of_memory_row_which_stays_if_the_retry_never_runs():
    import gpu_check

    order = [("p", 64, "a"), ("p", 64, "b")]
    oom = {"preset": "p", "seq_len": 64, "variant": "b", "kernel": "sdpa", "backend": "cudnn",
           "error": "out of memory: Tried to allocate", "retry_queued": True}
    retried = {"preset": "p", "seq_len": 64, "variant": "b", "tokens_per_s": 1.0, "retried_alone_after": "oom"}
    first = {"preset": "p", "seq_len": 64, "variant": "a", "tokens_per_s": 2.0}
    assert gpu_check.latest_per_case([oom, first], order) == [first, oom]
    assert gpu_check.latest_per_case([oom, first, retried], order) == [first, retried]
    report = {"environment": {"device": "x", "torch": "y"}, "precision": "bf16-mixed", "compiled": True,
              "command": "c", "seconds": 1, "steps": [oom], "stopped_in": [], "not_run": [], "equality": [],
              "processes": {}, "phases": ["steps"]}
    assert "out of memory: Tried to allocate (retry alone queued, not run)" in gpu_check.markdown(report)


@pytest.mark.slow
def test_the_gpu_check_stopped_by_sigterm_stops_its_workers(tmp_path):
    """Workers run in process groups of their own (so that the deadline stops their compile
    processes too); a check ended by SIGTERM (a job's time limit, `timeout`) must stop them."""
    import signal
    import subprocess

    out = tmp_path / "out"
    script = Path(__file__).resolve().parents[1] / "bench" / "gpu_check.py"
    check = subprocess.Popen(
        [sys.executable, str(script), "--device", "cpu", "--presets", "tiny", "--seq-lens",
         *[str(64 * k) for k in range(1, 9)], "--tokens-per-step", "512", "--steps", "50", "--no-compile",
         "--precision", "32-true", "--phases", "steps", "--workers", "2", "--out", str(out)])
    started = out / "part-steps.started-0"
    deadline = time.time() + 120
    while not started.exists() and time.time() < deadline:
        time.sleep(0.2)
    worker = json.loads(started.read_text())["pid"]
    check.send_signal(signal.SIGTERM)
    assert check.wait(timeout=60) == 128 + signal.SIGTERM
    deadline = time.time() + 10
    while not _gone(worker) and time.time() < deadline:
        time.sleep(0.1)
    assert _gone(worker), "a steps worker outlived the check"


def test_a_parameter_left_without_a_gradient_fails_its_steps_case_and_its_equality_row(monkeypatch):
    """A fused path that dropped a term's gradient would train on without it: the steps case and the
    fused kernel's equality row name the parameter rather than report a speed or a NoneType error."""
    import gpu_check
    import torch

    build = gpu_check.build_model

    def term_gradient_dropped(config):
        model = build(config)
        if config.attn_kernel != "explicit":  # as a fused kernel losing qk_scale's term's gradient would
            attn = model.blocks[0].attn
            terms_of = attn.score_terms

            def detached_terms(*args):
                terms = terms_of(*args)
                return terms._replace(dense=terms.dense.detach())

            attn.score_terms = detached_terms
        return model

    monkeypatch.setattr(gpu_check, "build_model", term_gradient_dropped)
    cpu = torch.device("cpu")
    config = gpu_check.ModelConfig(**{**gpu_check.EQUALITY_SHAPE, "variant": "qk_scale"})
    steps = gpu_check.train_steps(config, cpu, "32-true", batch_size=1, steps=1, compile=False)
    assert steps["error"] == "no gradient for blocks.0.attn.score.weight, blocks.0.attn.score.bias"
    rows = gpu_check.equality("qk_scale", cpu, "32-true", [])
    assert rows and all(row == {"variant": "qk_scale", "kernel": row["kernel"], "ok": False,
                                "error": "RuntimeError: no gradient for blocks.0.attn.score.weight, "
                                         "blocks.0.attn.score.bias"} for row in rows)

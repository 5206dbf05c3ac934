"""The one prepared GPU check: every variant at the ~100M presets, bf16, compiled, on this GPU.

    python bench/gpu_check.py                 # on one H100/H200-class GPU: at most 8 minutes
    python bench/gpu_check.py --device cpu --presets tiny --seq-lens 64 --tokens-per-step 128 \\
        --steps 1 --no-compile --precision 32-true --phases equality steps   # a smoke run on a CPU

Writes ``<out>/gpu_check.json`` and ``<out>/gpu_check.md`` (the table for bench/RESULTS.md)
after every phase and step case. Each part runs in processes of its own with a time limit of
its own, so that a hung compile or a CUDA error that spoils its process costs that part's time
and nothing more; the whole check stops at ``--deadline-s``, and whatever it finished is kept.
Three phases in turn:

1. **train** (``--train-s``): ``train.py`` itself, as a researcher runs it on a GPU
   (``TRAIN_OVERRIDES``: Lightning's loop, bf16-mixed, compiled, validation every 10 steps):
   its exit code, steps, validation losses, tokens/s and MFU as it logged them, and the graphs
   compiled by each validation's end, which must not grow after the first (no recompile at
   every validation). First: it is the path a researcher takes, and the memory held for it
   (the most of any phase) goes back to the step cases once it ends.
2. **equality** (``--equality-s``): for every variant and every kernel it trains on here,
   logits and gradients of the same weights against the explicit kernel under the same
   precision, relative error at most ``EQUALITY_TOLERANCE``; ``EQUALITY_PROCESSES`` processes
   side by side, each a share of the variants.
3. **cuda-tests** (``--tests-s``): the CUDA-only tests (the memory estimate against a measured
   CUDA step; FlexAttention gradients against the explicit kernel), a pytest process per file
   side by side (FlexAttention's in two, each half of the variants): each one's summary.

and beside them, from the start until the deadline, **steps**: per (preset, T, variant), in
order of importance (every variant at the first T, then the next; the presets side by side), the
kernel and SDPA backend ``attnlab.plan`` predicts and its memory estimate; on SDPA, the backend
torch really calls in one eager forward (``attnlab.observed_kernel``); then a few training steps
(forward, cross-entropy, backward, fused AdamW; ``bench/throughput.py``'s step) at
``--precision``, compiled as ``train.py`` compiles (each block on its own): the first step's
seconds (compilation), tokens/s (median of ``--steps``), MFU (``attnlab.flops``' FLOPs per token
against the device's peak), peak memory of the timed steps (``torch.cuda.max_memory_allocated``)
and its ratio to the estimate. A cold compile is tens of seconds of CPU work and a case's timed
steps seconds of GPU, so ``--workers`` processes (niced: the phases' processes come first for the
CPUs) compile side by side and time one at a time, never while ``train.py`` trains
(``bench/gpu_share.py``): a case is admitted while the estimates of everything on the GPU fit
``--memory-gib`` (the cases running, and the most any phase still to run needs,
``PHASE_RESERVE_GIB``, held from the start and shrunk as phases end), later cases passing one
that does not fit for ``gpu_share.HEAD_WAIT_S`` at most; one out of memory beside other cases is
retried once with no other case beside it. Each row names what else ran on the GPU during its
timed steps. A worker that ends in an error (a CUDA error spoils its process) or spends
``case_limit_s`` in one case (``CASE_LIMIT_S``; longer with a ``--train-s`` whose train phase a
case may wait for) is stopped and replaced. Cases not reached are listed as not run;
cases a worker was stopped in, by name.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import fcntl
import functools
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from attnlab.atomic import atomic_write
from attnlab.config import ModelConfig
from attnlab.cudnn_sdpa import device_capability, prefers_cudnn
from attnlab.flops import device_peak_flops, flops_per_token
from attnlab.model import build_model, parameters_without_gradient
from attnlab.observed_kernel import agrees_with_plan, observed_backends
from attnlab.params import variant_at_preset
from attnlab.plan import estimate_peak_bytes, kernel_plan
from attnlab.training.hardware import choose_matmul_precision
from variants import available_variants, get_variant
from variants.registry import supported_kernels

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/: the throughput bench's training step
from gpu_share import WAIT, SharedGpu  # noqa: E402
from throughput import Contestant, _sync  # noqa: E402

SCRIPT = Path(__file__).resolve()
ROOT = SCRIPT.parents[1]
EQUALITY_SHAPE = dict(vocab_size=512, block_size=256, n_layer=2, n_head=4, n_query_groups=2, n_embd=256,
                      intermediate_size=512)  # batch 2
EQUALITY_TOLERANCE = 2e-2  # as tests/test_bf16.py: bf16's rounding (2^-8) x 5
# Their tests named *cuda*: a pytest process per file, side by side (cuda_tests); FlexAttention's
# file, a cold compile per variant, in two complementary halves of its variants.
CUDA_TESTS = ["tests/test_plan.py", "tests/test_cudnn_sdpa.py", "tests/test_flex_kernel.py"]
SPLIT_CUDA_TESTS = {"tests/test_flex_kernel.py"}
PHASES = ("train", "equality", "cuda-tests", "steps")  # the order they run in (steps: beside them)
# The train phase: train.py as a researcher runs it on a GPU, short. gqa100m's heads of 64 put
# qk_scale on FlexAttention, the most fragile path: its block mask and score_mod compiled inside
# Lightning's loop, validation at another batch, the head-score probe on the explicit kernel.
TRAIN_OVERRIDES = ["trainer=gpu", "model=gqa100m", "variant=qk_scale", "trainer.seq_len=2048",
                   "trainer.batch_size=8", "trainer.max_steps=30", "trainer.val_every_n_steps=10",
                   "trainer.val_batches=4", "trainer.log_every_n_steps=5", "trainer.progress_bar=false",
                   "optim.warmup_steps=5"]
# GPU memory each phase holds while it runs beside the steps workers. The equality phase and the
# CUDA-only tests train models of a few MB; the train phase's estimate (gqa100m, qk_scale, T=2048,
# batch 8) is 15.4 GiB, and this leaves room for its error (--train-reserve-gib with other overrides).
PHASE_RESERVE_GIB = {"equality": 4.0, "cuda-tests": 4.0, "train": 24.0}
# What the estimates of everything on the GPU at once may add up to, of its memory. The rest: a CUDA
# context per process (about 0.5-1 GiB each; up to 4 workers, the check's own and a phase's: 3 for the
# CUDA-only tests' files side by side), what the caching
# allocator reserves beyond what is allocated (expandable segments keep that small) and the
# estimates' error (within 1.5x in the tests).
MEMORY_SHARE = 0.8
CASE_RESERVE_S = 45  # a steps case (a cold compile, then steps) is not started with less time than this left
# A steps case (a cold compile beside others', then its steps) still running after this is hung:
# its worker is stopped and replaced. Far above a compile's tens of seconds; and since a case may
# wait for its timed steps while train.py trains, at least --train-s + CASE_BEYOND_TRAIN_S.
CASE_LIMIT_S = 240
CASE_BEYOND_TRAIN_S = 90
# The equality phase's processes side by side, each a share of the variants: a FlexAttention
# compile per variant is tens of seconds of CPU work, cold.
EQUALITY_PROCESSES = 2
CUDA_ERROR_EXIT = 3  # a steps process that hit a CUDA error exits with this, to be restarted
# What a CUDA error's message holds (torch's runtime, the driver, cuDNN, Triton, a bad address).
CUDA_ERROR_MARKS = ("CUDA error", "CUDA driver error", "cuDNN error", "Triton Error [CUDA]",
                    "illegal memory access")


def autocast(device: torch.device, precision: str):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16-mixed")


# --------------------------------------------------------------------------- phase: steps

def train_steps(config: ModelConfig, device: torch.device, precision: str, batch_size: int, steps: int,
                compile: bool, gpu: SharedGpu | None = None, holder: str | None = None,
                until: float | None = None) -> dict:
    """One warm-up (compiling) step, then ``steps`` timed ones, each ``throughput.Contestant``'s
    step; with ``gpu``, the timed steps in its timed window (the GPU to this worker's timing alone),
    if it is free by ``until``."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        start_bytes = torch.cuda.memory_allocated(device)
    torch.manual_seed(0)
    contestant = Contestant(config.variant, build_model(config), device, precision, compile)
    T = config.block_size
    idx = torch.randint(0, config.vocab_size, (batch_size, T + 1), device=device)

    def step() -> float:
        _sync(device)
        start = time.perf_counter()
        contestant.step(idx[:, :-1], idx[:, 1:])
        _sync(device)
        return time.perf_counter() - start

    with gpu.first_step(holder) if gpu else contextlib.nullcontext():
        first = step()
    asked = time.time()
    with gpu.timed_window(holder, until) if gpu else contextlib.nullcontext({}) as window:
        waited = time.time() - asked
        if device.type == "cuda":  # the peak of training steps, not of compiling one
            torch.cuda.reset_peak_memory_stats(device)
        seconds = sorted(step() for _ in range(steps))
    median = seconds[len(seconds) // 2]
    tokens_per_s = batch_size * T / median
    peak_flops = device_peak_flops(device, precision)
    result = {"first_step_s": first, "step_s": median, "fastest_step_s": seconds[0], "tokens_per_s": tokens_per_s,
              "mfu": flops_per_token(config, T) * tokens_per_s / peak_flops if peak_flops else None,
              "waited_for_window_s": waited,
              **{key: window[key] for key in ("window", "beside_first_steps", "beside_phases") if key in window}}
    if contestant.without_gradient:  # a fused path that dropped a term's gradient: it would not train
        result["error"] = f"no gradient for {', '.join(contestant.without_gradient)}"
    if device.type == "cuda":  # weights, AdamW state and the step's peak, as the plan estimates
        result["peak_bytes"] = torch.cuda.max_memory_allocated(device) - start_bytes
    return result


def observe_backend(config: ModelConfig, device: torch.device, precision: str, planned: str) -> dict:
    """The SDPA backend torch really calls in one eager forward (batch 1, gradients on) against the plan's."""
    torch.manual_seed(0)
    model = build_model(config).to(device)
    idx = torch.randint(0, config.vocab_size, (1, config.block_size), device=device)
    seen = observed_backends(model, idx, torch.bfloat16 if precision == "bf16-mixed" else None)
    del model
    return {"observed_backend": ", ".join(sorted(seen)) or "no fused SDPA op",
            "backend_agrees": agrees_with_plan(planned, seen)}


def cases(presets: list[str], seq_lens: list[int], variants: list[str]) -> list[tuple[str, int, str]]:
    """(preset, T, variant) in order of importance: every variant at the first T, then the next;
    the presets side by side, so that a deadline leaves both with their first variants measured."""
    return [(p, T, v) for T in seq_lens for v in variants for p in presets]


def _causes(err: BaseException) -> list[BaseException]:
    """``err`` and the errors it was raised from (Inductor wraps what fails inside a compile)."""
    chain: list[BaseException] = []
    while err is not None and err not in chain:
        chain.append(err)
        err = err.__cause__ or err.__context__
    return chain


def is_out_of_memory(err: BaseException) -> bool:
    return any(isinstance(e, torch.OutOfMemoryError) or "CUDA out of memory" in str(e) for e in _causes(err))


def is_cuda_error(err: BaseException) -> bool:
    """An error after which this process's CUDA context cannot be trusted: torch's own (the
    runtime's, the driver's, as expandable segments map memory through it, or cuDNN's), or a
    Triton kernel's launch ("Triton Error [CUDA]"), also when a compile wrapped it or it was
    raised while another error (an OOM) was being handled. An OOM alone is not one."""
    return any(
        isinstance(e, RuntimeError) and (any(m in str(e) for m in CUDA_ERROR_MARKS)
                                         or type(e).__name__ == "AcceleratorError")
        for e in _causes(err))


def full_batch_size(args, T: int) -> int:
    """A case's batch at ``--tokens-per-step`` (before ``planned`` halves it to fit)."""
    return max(1, args.tokens_per_step // T)


def planned(preset: str, T: int, variant: str, args, device: torch.device) -> tuple[ModelConfig, int, object, str]:
    """The case's model (the preset's variant at context T), batch size (``--tokens-per-step``'s,
    halved until the estimate fits the memory the cases share), kernel plan and the plan's reason
    for the shape."""
    config, reason = variant_at_preset(preset, variant)
    config = dataclasses.replace(config, block_size=T)  # the run's context: trainer.seq_len = T
    full = full_batch_size(args, T)

    def plan_at(batch_size: int):
        return kernel_plan(config, T, batch_size, args.precision, device.type,
                           cudnn_first=prefers_cudnn(str(device)), capability=device_capability(str(device)))

    batch_size, plan = full, plan_at(full)
    # A case whose estimate exceeds the memory the cases share (talking_heads' fp32 maps at
    # gqa100m, T=4096) would only run out of memory: it takes the largest halved batch that fits,
    # as a researcher lowers trainer.batch_size (tokens/s stay comparable).
    budget = getattr(args, "share_bytes", None)
    while budget and batch_size > 1 and estimate_peak_bytes(config, T, batch_size, args.precision, plan,
                                                             device.type) > budget:
        batch_size //= 2
        plan = plan_at(batch_size)
    return config, batch_size, plan, reason


def case_estimate(case: tuple[str, int, str], args, device: torch.device) -> int:
    """The plan's peak training memory of ``case``: what its worker holds on the GPU."""
    config, batch_size, plan, _ = planned(*case, args, device)
    return estimate_peak_bytes(config, case[1], batch_size, args.precision, plan, device.type)


def run_case(preset: str, T: int, variant: str, args, device: torch.device,
             gpu: SharedGpu | None = None, holder: str | None = None) -> tuple[dict, bool]:
    """The case's row, and whether its process must end (a CUDA error). With ``gpu``, its timed
    steps and the forward that observes the SDPA backend run in the GPU's timed window."""
    config, batch_size, plan, reason = planned(preset, T, variant, args, device)
    row = {"preset": preset, "seq_len": T, "variant": variant, "batch_size": batch_size,
           "full_batch_size": full_batch_size(args, T),
           "n_head": config.n_head, "shape_note": reason, "kernel": plan.kernel, "backend": plan.backend,
           "why": plan.why,
           "estimate_bytes": estimate_peak_bytes(config, T, batch_size, args.precision, plan, device.type)}
    fatal = False
    try:
        row.update(train_steps(config, device, args.precision, batch_size, args.steps, not args.no_compile,
                               gpu, holder, args.until))
        if "peak_bytes" in row:
            row["estimate_vs_measured"] = row["estimate_bytes"] / row["peak_bytes"]
        if plan.kernel == "sdpa":  # the plan's backend is a prediction of torch's choice: check it
            try:
                with gpu.timed_window(holder, args.until) if gpu else contextlib.nullcontext():
                    row.update(observe_backend(config, device, args.precision, plan.backend))
            except Exception as err:  # noqa: BLE001 - the measurements above stand
                if device.type == "cuda" and is_cuda_error(err):
                    raise  # this process's CUDA context is spoilt: below, it ends
                row["observed_backend"] = f"not observed: {type(err).__name__}: {first_line(err)}"
    except Exception as err:  # noqa: BLE001 - one failing case must not lose the others
        fatal = device.type == "cuda" and is_cuda_error(err)
        if is_out_of_memory(err) and not fatal:
            row["error"] = f"out of memory: {first_line(err)}"
        else:
            row["error"] = f"{type(err).__name__}: {first_line(err)}"
    finally:
        torch._dynamo.reset()
        if device.type == "cuda" and not fatal:
            try:
                torch.cuda.empty_cache()
            except RuntimeError as err:  # a fault the case's own error did not show
                fatal = is_cuda_error(err)
                row.setdefault("error", f"{type(err).__name__}: {first_line(err)}")
                if not fatal:
                    raise
    return row, fatal


def first_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else ""


def steps_phase(args, device: torch.device, part: Path, until: float) -> int:
    """Worker ``args.worker``: step cases claimed from the shared GPU's ledger, one at a time,
    their rows appended to ``part``, until none is left or ``until``."""
    gpu = SharedGpu(share_dir_of(part), args.share_bytes)
    holder = f"worker {args.worker}"
    # The phases' processes (train.py's own compile above all) go first for the CPUs; timed steps
    # never run beside train.py, so this does not slow what the workers measure.
    with contextlib.suppress(OSError):
        os.nice(10)
    order = cases(args.presets, args.seq_lens, variant_list(args))
    while time.time() <= until - CASE_RESERVE_S:
        claim = gpu.claim(order, lambda case: case_estimate(case, args, device), holder)
        if claim is None:
            break
        if claim == WAIT:
            time.sleep(0.5)
            continue
        case = claim["case"]
        # Where a process stopped at its limit was: the report names the case and its seconds.
        with atomic_write(started_file(part, args.worker)) as note:
            json.dump({"case": case, "started": time.time(), "pid": os.getpid(),
                       "retry": claim["retry_of"] is not None}, note)
        claimed = time.time()
        try:
            row, fatal = run_case(*case, args, device, gpu, holder)
        finally:
            held = gpu.release(holder)
        beside = held["most_beside"] if held else 0
        row.update(worker=args.worker, case_window=[claimed, time.time()], most_beside_bytes=beside)
        if claim["retry_of"]:
            row["retried_alone_after"] = claim["retry_of"]
        # Others' memory may have been the reason: the case runs again with no other case beside
        # it. Its row stays until the retry's replaces it (the deadline may come first).
        if row.get("error", "").startswith("out of memory") and beside and gpu.retry_alone(
                case, f"{row['error']} (beside {beside / 2**30:.1f} GiB of others' estimates)"):
            row["retry_queued"] = True
        append_rows(part, [row])
        if fatal:
            return CUDA_ERROR_EXIT
    return 0


# --------------------------------------------------------------------------- phase: equality

def equality(variant: str, device: torch.device, precision: str, rows: list[dict]) -> list[dict]:
    """Every kernel ``variant`` trains on here against the explicit kernel, same weights: a row per
    fused kernel appended to ``rows``. A kernel that fails gets a row with its error and the next
    one runs, unless the error spoils the process's CUDA context: raised after its row and rows
    naming the kernels after it as not run."""
    shape = dict(EQUALITY_SHAPE, variant=variant)
    block = get_variant(variant)
    # Each variant's score_mod is another compile of FlexAttention's wrapper: without a reset,
    # Dynamo's recompile limit (8) could send the later variants to FlexAttention's eager path.
    torch._dynamo.reset()
    idx = torch.randint(0, shape["vocab_size"], (2, shape["block_size"] + 1), device=device)

    def logits_and_gradient(kernel: str, weights: dict | None) -> tuple[dict, torch.Tensor, torch.Tensor]:
        torch.manual_seed(0)
        model = build_model(ModelConfig(**shape, attn_kernel=kernel)).to(device)
        if weights is not None:
            model.load_state_dict(weights)
        with autocast(device, precision):
            logits = model(idx[:, :-1])
        F.cross_entropy(logits.float().flatten(0, 1), idx[:, 1:].flatten()).backward()
        if device.type == "cuda":  # a kernel's asynchronous error surfaces here, in its own call
            torch.cuda.synchronize(device)
        missing = parameters_without_gradient(model)
        if missing:  # a fused path that dropped a term's gradient: named, not a NoneType error
            raise RuntimeError(f"no gradient for {', '.join(missing)}")
        return (model.state_dict(), logits.float().detach(),
                torch.cat([p.grad.float().flatten() for p in model.parameters()]))

    weights, reference_logits, reference_grad = logits_and_gradient("explicit", None)
    kernels = [k for k in supported_kernels(block, ModelConfig(**shape))
               if k != "explicit" and not (k == "flex" and device.type != "cuda")]  # flex: no CPU backward
    for done, kernel in enumerate(kernels, start=1):
        try:
            _, logits, grad = logits_and_gradient(kernel, weights)
            logit_error = ((logits - reference_logits).abs().max() / reference_logits.abs().max()).item()
            grad_error = ((grad - reference_grad).norm() / reference_grad.norm()).item()
        except Exception as err:
            rows.append({"variant": variant, "kernel": kernel, "ok": False,
                         "error": f"{type(err).__name__}: {first_line(err)}"})
            if is_cuda_error(err):  # the process's CUDA context is spoilt: its phase starts another
                rows.extend({"variant": variant, "kernel": later, "ok": False,
                             "error": f"not run: the CUDA error in {kernel} spoilt the process"}
                            for later in kernels[done:])
                raise
            continue
        rows.append({"variant": variant, "kernel": kernel, "logit_error": logit_error, "grad_error": grad_error,
                     "ok": logit_error <= EQUALITY_TOLERANCE and grad_error <= EQUALITY_TOLERANCE})
    return rows


def equality_phase(args, device: torch.device, part: Path, until: float) -> int:
    """Process ``args.shard`` ("i/n"): every n-th variant from the i-th, its rows appended to ``part``."""
    done = {r["variant"] for r in read_rows(part)}
    index, count = (int(x) for x in args.shard.split("/"))
    for variant in variant_list(args)[index::count]:
        if variant in done or time.time() > until:
            continue
        # A crash (a signal, an abort) leaves no row: the phase names the variant from this note.
        with atomic_write(started_file(part, 0)) as note:
            json.dump({"case": variant, "started": time.time(), "pid": os.getpid()}, note)
        rows: list[dict] = []
        try:
            equality(variant, device, args.precision, rows)
        except Exception as err:  # noqa: BLE001
            if not rows or "error" not in rows[-1]:  # not a kernel's own row: the explicit reference's
                rows.append({"variant": variant, "kernel": "?", "ok": False,
                             "error": f"{type(err).__name__}: {first_line(err)}"})
            if device.type == "cuda" and is_cuda_error(err):
                append_rows(part, rows)
                return CUDA_ERROR_EXIT
        append_rows(part, rows or [{"variant": variant, "kernel": None, "ok": True}])  # explicit only
    return 0


# --------------------------------------------------------------------------- phase: train

def train_phase(overrides: list[str], until: float, scratch_parent: Path | None = None) -> dict:
    """``train.py`` with ``overrides`` in a scratch results directory under ``scratch_parent`` (the
    system's temporary directory by default: its checkpoints are GBs, which must not be left in the
    check's output if it is stopped; removed after), until ``until``: its exit code, steps, validation
    losses, tokens/s and MFU
    as it logged them, and the graphs compiled by each validation's end (``compile/graphs``),
    which must not grow after the first."""
    scratch = Path(tempfile.mkdtemp(prefix="train-scratch-", dir=scratch_parent))
    command = [sys.executable, "train.py", *overrides, f"results_dir={scratch / 'runs'}",
               "experiment_name=gpu_check", f"hydra.run.dir={scratch / 'hydra'}"]
    report: dict = {"command": "python train.py " + " ".join(overrides), "returncode": None}
    started = time.time()
    try:
        report["returncode"], stdout, stderr = run_until(command, until)
        output = stdout + stderr
        report.update({"seconds": time.time() - started,
                       "warnings": [line.strip() for line in output.splitlines() if "WARNING" in line][:10],
                       "output_tail": output[-3000:]})
        report.update(_logged(scratch / "runs", overrides))
    except Exception as err:  # noqa: BLE001 - the other phases' results must still be written
        report.update({"seconds": time.time() - started, "error": f"{type(err).__name__}: {first_line(err)}"})
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return report


def _logged(results_dir: Path, overrides: list[str]) -> dict:
    """What the run logged: ``steps`` from its summary once it finished, else ``last_logged_step``."""
    import pandas as pd

    from attnlab.runs import RunDir

    config = dict(item.split("=", 1) for item in overrides if "=" in item)
    run = RunDir.for_run(results_dir, "gpu_check", config.get("variant", "baseline"), int(config.get("seed", 0)))
    if not run.metrics.exists() or run.metrics.stat().st_size == 0:
        return {}
    metrics = pd.read_csv(run.metrics)

    def column(name: str) -> list[float]:
        return metrics[name].dropna().tolist() if name in metrics else []

    steps = {"steps": run.load_summary()["steps"]} if run.summary.exists() else {
        "last_logged_step": int(metrics["step"].max()) if "step" in metrics and len(metrics) else 0}
    return {**steps, "val_loss": column("val/loss"), "compiled_graphs_by_validation": column("compile/graphs"),
            "tokens_per_s": _median(column("train/device/items_per_sec")), "mfu": _median(column("train/device/mfu"))}


def _median(values: list[float]) -> float | None:
    return sorted(values)[len(values) // 2] if values else None


def train_line(train: dict) -> str:
    not_started = train.get("error", "").startswith("not started")
    if not_started:
        outcome = train["error"]
    elif train["returncode"] is None:
        outcome = f"stopped at its limit after {train['seconds']:.0f} s" if not train.get("error") else "failed"
    else:
        outcome = f"exit {train['returncode']} in {train['seconds']:.0f} s"
    parts = [f"`{train['command']}`: {outcome}"]
    if train.get("error") and not not_started:
        parts.append(f"not read: {train['error']}")
    if "val_loss" in train:
        losses = ", ".join(f"{v:.3f}" for v in train["val_loss"]) or "none"
        steps = (f"{train['steps']} steps" if "steps" in train
                 else f"unfinished, last logged at step {train['last_logged_step']}")
        parts.append(f"{steps}; validation loss {losses}")
        if train["tokens_per_s"] is not None:
            parts.append(f"{train['tokens_per_s']:,.0f} tokens/s"
                         + (f", MFU {train['mfu']:.1%}" if train["mfu"] is not None else ""))
        graphs = train["compiled_graphs_by_validation"]
        if graphs:
            again = graphs[-1] - graphs[0]
            parts.append(f"graphs compiled by each validation's end {', '.join(f'{g:.0f}' for g in graphs)} ("
                         + ("no recompile after the first" if again == 0 else f"{again:.0f} after the first") + ")")
    return "train.py: " + "; ".join(parts)


# --------------------------------------------------------------------------- phases as processes

def case_of(row: dict) -> tuple[str, int, str]:
    """A steps row's case: (preset, T, variant), as ``cases`` lists them."""
    return row["preset"], row["seq_len"], row["variant"]


def share_dir_of(part: Path) -> Path:
    """The shared GPU's ledger of the steps workers that append to ``part``."""
    return part.with_suffix(".share")


def clean_parts(parts) -> None:
    """The phases' rows, their workers' notes and ledger: gone before a check and after it."""
    for part in parts:
        part.unlink(missing_ok=True)
        for started in part.parent.glob(f"{part.stem}.started-*"):
            started.unlink()
        shutil.rmtree(share_dir_of(part), ignore_errors=True)


def device_total_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def started_file(part: Path, worker: int) -> Path:
    """Where worker ``worker`` notes the case it started, and when."""
    return part.with_suffix(f".started-{worker}")


def read_started(path: Path) -> dict | None:
    """A worker's note of the case it started (None if it has none: never written, or removed by
    a check's cleanup meanwhile; it is written atomically)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def still_in(started: dict, rows_by_case: dict[tuple[str, int, str], dict]) -> bool:
    """Whether the case a worker ``started`` has no row from that try: none at all, or only the
    row of an earlier try (an out-of-memory one whose retry this is)."""
    row = rows_by_case.get(tuple(started["case"]))
    return row is None or bool(row.get("retry_queued") and row["case_window"][1] < started["started"])


def stopped_cases(part: Path, rows: list[dict]) -> list[dict]:
    """The steps cases a worker was stopped in (started, no row), with their seconds so far."""
    by_case = {case_of(r): r for r in rows}
    notes = [read_started(path) for path in sorted(part.parent.glob(f"{part.stem}.started-*"))]
    return [{"case": tuple(n["case"]), "seconds": time.time() - n["started"], "retry": n.get("retry", False)}
            for n in notes if n is not None and still_in(n, by_case)]


def read_rows(part: Path) -> list[dict]:
    """The rows appended so far; a line still being written is not one yet."""
    if not part.exists():
        return []
    rows = []
    for line in part.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            rows.append(json.loads(line))
    return rows


def latest_per_case(rows: list[dict], order: list[tuple[str, int, str]]) -> list[dict]:
    """A step case's last row (a retry's replaces the out-of-memory row before it), in ``order``."""
    latest = {case_of(r): r for r in rows}
    return [latest[case] for case in order if case in latest]


def append_rows(part: Path, rows: list[dict]) -> None:
    with part.open("a", encoding="utf-8") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # steps workers append side by side
        for row in rows:
            f.write(json.dumps(row, default=str) + "\n")
            print(json.dumps(row, default=str), flush=True)


# One variant per attention path first, so that a deadline leaves every path measured: plain causal
# (cuDNN/flash; math at seed100m), logit terms (FlexAttention; math at seed100m), a sigmoid (explicit),
# a cap (FlexAttention; explicit at seed100m), unequal q/v head sizes, the block's own attention.
FIRST_VARIANTS = ("baseline", "qk_scale", "sigmoid_attn", "softcap", "diff_attn", "talking_heads")


def variant_list(args) -> list[str]:
    variants = args.variants or available_variants()
    return [*[v for v in FIRST_VARIANTS if v in variants], *[v for v in variants if v not in FIRST_VARIANTS]]


def equality_processes(argv: list[str], parts: list[Path], until: float, variants: list[str],
                       script: Path = SCRIPT) -> tuple[list[dict], list[str]]:
    """The equality phase in ``len(parts)`` processes side by side, each a share of the variants
    with a part of its own (and a new process after a CUDA error or a crash, ``run_phase_process``):
    (the rows in ``variants``' order, each process's exits)."""
    count = len(parts)
    env = compile_threads_shared(count)
    outcomes = side_by_side([
        functools.partial(run_phase_process, "equality", [*argv, "--shard", f"{index}/{count}"], parts[index],
                          until, script, env) for index in range(count)])
    rank = {variant: i for i, variant in enumerate(variants)}
    rows = sorted((row for outcome in outcomes for row in outcome["rows"]),
                  key=lambda row: rank.get(row["variant"], len(rank)))  # stable: a variant's kernels in order
    return rows, [f"process {index + 1}/{count}: {run}" for index, outcome in enumerate(outcomes)
                  for run in outcome["processes"]]


def run_phase_process(phase: str, argv: list[str], part: Path, until: float,
                      script: Path = SCRIPT, env: dict | None = None) -> dict:
    """``phase`` in child processes of ``script`` until done or ``until``: a new one after a
    CUDA error or a crash, while the last one made progress. A child that crashed (a signal, an
    abort: no row of its own) gets a row naming the variant it was in, from its note, and the
    next child goes on with the variant after it."""
    runs = []
    started = started_file(part, 0)
    while time.time() < until:
        before = len(read_rows(part))
        started.unlink(missing_ok=True)
        command = [sys.executable, str(script), *argv, "--run-phase", phase, "--part", str(part),
                   "--until", str(until)]
        # A few seconds' grace: the child stops itself before ``until``.
        code, _, _ = run_child(command, max(1.0, until - time.time()) + 5, env=env)
        if code is None:
            runs.append("stopped at the deadline")
            break
        runs.append(f"exit {code}")
        if STOPPING.is_set():  # killed with the check, not crashed
            break
        note = read_started(started)
        if code not in (0, CUDA_ERROR_EXIT) and note is not None and note["case"] not in {
                r["variant"] for r in read_rows(part)}:
            append_rows(part, [{"variant": note["case"], "kernel": "?", "ok": False,
                                "error": f"its process ended with exit {code} in this variant"}])
        if code == 0 or len(read_rows(part)) == before:
            break
    started.unlink(missing_ok=True)
    return {"processes": runs, "rows": read_rows(part)}


class StepsPool:
    """``workers`` steps workers (child processes of ``script``, each in a process group of its own,
    so that stopping one stops its compile processes too) side by side until every case is done or
    ``until``. A worker that ends other than by running out of cases (a CUDA error, a crash, a
    signal), or that has spent ``case_limit_s`` on one case, is replaced under a new name while
    time is left; the case it left without a row is named in the report as one a worker stopped
    in. ``on_rows()`` is called when rows arrive."""

    def __init__(self, argv: list[str], part: Path, until: float, workers: int, script: Path = SCRIPT,
                 on_rows=None, case_limit_s: float = CASE_LIMIT_S) -> None:
        self.argv, self.part, self.until, self.workers, self.script = argv, part, until, workers, script
        self.on_rows, self.case_limit_s = on_rows, case_limit_s
        self.running: dict[int, subprocess.Popen] = {}
        self._lock = threading.Lock()  # ``stop`` may come from another thread (an interrupt)
        self.env = compile_threads_shared(workers) if workers > 1 else dict(os.environ)
        # Blocks of varying size (a case after another) leave less reserved-but-unused memory,
        # which the estimates of the cases beside it do not count.
        self.env.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

    def _start(self, worker: int) -> None:
        self.running[worker] = subprocess.Popen(
            [sys.executable, str(self.script), *self.argv, "--run-phase", "steps", "--part", str(self.part),
             "--until", str(self.until), "--worker", str(worker)],
            cwd=ROOT, env=self.env, start_new_session=True)

    def _over_its_case_limit(self, worker: int, rows_by_case: dict) -> bool:
        """Whether ``worker`` has been in its current case (started, no row yet) for too long."""
        started = read_started(started_file(self.part, worker))
        return (started is not None and still_in(started, rows_by_case)
                and time.time() - started["started"] > self.case_limit_s)

    def run(self) -> dict:
        runs: list[str] = []
        try:
            for worker in range(self.workers):
                self._start(worker)
            next_worker = self.workers  # a replacement has a name of its own: its own started-file
            replaced, seen = 0, 0
            while self.running:
                rows = read_rows(self.part)
                by_case = {case_of(r): r for r in rows}
                with self._lock:
                    for worker, process in list(self.running.items()):
                        code = process.poll()
                        if code is None and self._over_its_case_limit(worker, by_case):
                            _kill_group(process)
                            code = f"stopped after {self.case_limit_s:.0f} s in one case"
                        if code is None:
                            continue
                        runs.append(f"worker {worker}: exit {code}" if isinstance(code, int)
                                    else f"worker {worker}: {code}")
                        del self.running[worker]
                        if code != 0 and replaced < 2 * self.workers and time.time() < self.until - CASE_RESERVE_S:
                            self._start(next_worker)
                            next_worker, replaced = next_worker + 1, replaced + 1
                if time.time() > self.until:  # a case ran past the deadline
                    runs += [f"worker {worker}: stopped at the deadline" for worker in self.stop()]
                if len(rows) != seen and self.on_rows is not None:
                    try:
                        self.on_rows()
                    except Exception as err:  # noqa: BLE001 - a report not written now is written later
                        print(f"report not written: {type(err).__name__}: {err}", flush=True)
                seen = len(rows)
                time.sleep(0.2)
        except Exception as err:  # noqa: BLE001 - the pool must not die with its workers running
            runs.append(f"pool stopped: {type(err).__name__}: {first_line(err)}")
            runs += [f"worker {worker}: stopped with the pool" for worker in self.stop()]
        return {"processes": runs, "rows": read_rows(self.part)}

    def stop(self) -> list[int]:
        """Stop the running workers' process groups (all at once, then wait for each); the workers
        stopped."""
        with self._lock:
            stopped = list(self.running)
            for process in self.running.values():
                _kill_group(process, wait=False)
            for process in self.running.values():
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=10)
            self.running.clear()
        return stopped


def _kill_group(process: subprocess.Popen, wait: bool = True) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    if wait:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)


def cuda_tests(until: float) -> dict:
    """The CUDA-only tests, a pytest process per file side by side until ``until``: each file
    compiles kernels of its own (FlexAttention's, a variant at a time: tens of seconds each,
    cold), so in turn the last file would get only what the others left of the phase's time."""
    selections = cuda_test_selections()
    env = compile_threads_shared(len(selections))
    runs = side_by_side([functools.partial(cuda_test_file, path, until, env, keyword)
                         for path, keyword in selections])
    names = [f"{Path(path).name}" + (f" ({keyword})" if keyword != "cuda" else "") for path, keyword in selections]
    codes = [run["returncode"] for run in runs]
    failed = [c for c in codes if c not in (0, None)]
    return {"command": " & ".join(run["command"] for run in runs),
            "returncode": failed[0] if failed else None if None in codes else 0,
            "summary": "; ".join(f"{name}: {run['summary']}" for name, run in zip(names, runs)),
            "output_tail": "\n".join(f"== {name}\n{run['output_tail']}" for name, run in zip(names, runs)),
            "files": dict(zip(names, runs))}


def cuda_test_selections() -> list[tuple[str, str]]:
    """(file, pytest -k expression) per process: each file's tests named *cuda*, a split file's
    in two halves, every other registered variant and the rest (complements: no test in both, none
    left out)."""
    half = " or ".join(available_variants()[::2])
    return [selection for path in CUDA_TESTS for selection in (
        [(path, f"cuda and ({half})"), (path, f"cuda and not ({half})")] if path in SPLIT_CUDA_TESTS
        else [(path, "cuda")])]


def cuda_test_file(path: str, until: float, env: dict | None = None, keyword: str = "cuda") -> dict:
    # -v: a line per test as it ends, so a file stopped at its limit still says how far it got
    command = [sys.executable, "-m", "pytest", "-v", "--tb=short", "-rs", "-m", "", "-k", keyword, path]
    shown = shlex.join(["python", *command[1:]])
    limit = max(1.0, until - time.time())
    returncode, stdout, stderr = run_until(command, until, env)
    if returncode is None:
        return {"command": shown, "returncode": None,
                "summary": f"stopped at its limit of {limit:.0f} s after {tests_so_far(stdout)}",
                "output_tail": stdout[-1500:]}
    lines = [line for line in stdout.strip().splitlines() if line.strip()]
    return {"command": shown, "returncode": returncode,
            "summary": lines[-1].strip("= ") if lines else stderr[-500:], "output_tail": stdout[-1500:]}


def run_until(command: list[str], until: float, env: dict | None = None) -> tuple[int | None, str, str]:
    """``command`` in the repository, stopped at ``until``: (exit code, or None if stopped; its
    stdout; its stderr), what it printed so far either way."""
    code, stdout, stderr = run_child(command, max(1.0, until - time.time()), env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, errors="replace")
    return code, *(x.decode(errors="replace") if isinstance(x, bytes) else (x or "") for x in (stdout, stderr))


# The phases' child processes (train.py, the equality processes, the test files' pytest), so that a
# check stopped from outside stops them too: threads of its own wait on some of them.
_children: set[subprocess.Popen] = set()
_children_lock = threading.Lock()
STOPPING = threading.Event()  # set once the check is being stopped: no child is started or restarted


def run_child(command: list[str], timeout: float, **popen) -> tuple[int | None, Any, Any]:
    """``command`` in the repository, in a process group of its own (its compile processes stop
    with it): (exit code, or None if stopped at ``timeout`` seconds; its stdout and stderr where
    piped, what it printed so far either way). Registered while it runs, for ``stop_children``."""
    if STOPPING.is_set():
        return None, None, None
    with subprocess.Popen(command, cwd=ROOT, start_new_session=True, **popen) as process:
        with _children_lock:
            _children.add(process)
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired as expired:  # on POSIX it holds what was printed so far
            _kill_group(process)
            return None, expired.stdout, expired.stderr
        except BaseException:
            _kill_group(process)
            raise
        finally:
            with _children_lock:
                _children.discard(process)
    return process.returncode, stdout, stderr


def stop_children() -> None:
    """Kill every registered child's process group, and start no more."""
    STOPPING.set()
    with _children_lock:
        running = list(_children)
    for process in running:
        _kill_group(process, wait=False)


def side_by_side(jobs: list[Callable[[], Any]]) -> list[Any]:
    """``jobs`` in threads of their own, their results in order. Stopped from outside (SIGTERM,
    Ctrl-C: an exception in this thread), the children they started are killed first, so that
    the threads end at once instead of at their time limits."""
    pool = concurrent.futures.ThreadPoolExecutor(len(jobs))
    try:
        return [future.result() for future in [pool.submit(job) for job in jobs]]
    except BaseException:
        stop_children()
        raise
    finally:
        pool.shutdown(wait=True)


def compile_threads_shared(processes: int) -> dict:
    """The environment for ``processes`` compiling side by side (the steps workers, a phase's
    processes): Inductor's compile threads shared out between them, unless set already."""
    env = dict(os.environ)
    env.setdefault("TORCHINDUCTOR_COMPILE_THREADS", str(max(1, (os.cpu_count() or 1) // (processes + 1))))
    return env


def tests_so_far(verbose_output: str) -> str:
    """'N passed, M failed, K skipped' from pytest -v's per-test lines (the summary never came)."""
    counts = {outcome: 0 for outcome in ("PASSED", "FAILED", "ERROR", "SKIPPED")}
    for line in verbose_output.splitlines():
        if "::" in line:
            for outcome in counts:
                if f" {outcome}" in line:
                    counts[outcome] += 1
                    break
    return ", ".join(f"{n} {outcome.lower()}" for outcome, n in counts.items() if n) or "no test"


# --------------------------------------------------------------------------- report

def equality_line(report: dict) -> str:
    if "equality" not in report["phases"]:
        return "Fused = explicit: not run (--phases)"
    pairs = [e for e in report["equality"] if e.get("kernel") is not None]
    bad = [e for e in pairs if not e["ok"]]
    outside = ", ".join(
        f"{e['variant']}/{e['kernel']} " + (f"({e['error']})" if e.get("error") else
                                            f"(logits {e['logit_error']:.3g}, grads {e['grad_error']:.3g})")
        for e in bad)
    checked = {e["variant"] for e in report["equality"]}
    missing = [v for v in report["variants"] if v not in checked]
    return (f"Fused = explicit ({len(pairs)} variant-kernel pairs, tolerance {EQUALITY_TOLERANCE:g}): "
            + (f"outside: {outside}" if bad else "all within")
            + (f"; not reached: {', '.join(missing)}" if missing else ""))


def beside_cell(row: dict) -> str:
    """What else ran on the GPU during a case's timed steps: phases, other workers' first steps."""
    if "beside_first_steps" not in row:
        return "-"
    parts = [*row["beside_phases"], *([f"{row['beside_first_steps']} compiling step(s)"]
                                      if row["beside_first_steps"] else [])]
    return ", ".join(parts) or "nothing"


def markdown(report: dict) -> str:
    env = report["environment"]
    lines = [f"GPU check: {env['device']}, torch {env['torch']} (cuDNN {env.get('cudnn')}), {report['precision']}, "
             f"float32 matmuls {env.get('float32_matmul_precision')}, "
             f"{'compiled' if report['compiled'] else 'eager'}; `{report['command']}`; "
             f"{report['seconds']:.0f} s", "",
             f"Steps: {report.get('workers', 1)} worker(s) compiling side by side (compile s: the first step, "
             f"beside the other workers' compiles and the phases), each case admitted while the estimates of "
             f"everything on the device fit {report.get('memory_bytes', 0) / 2**30:.0f} GiB; timed steps (median "
             f"of {report.get('timed_steps', '?')}) one worker at a time, never beside train.py. Beside: what "
             f"else ran on the GPU at some time in a case's timed steps (another worker's compiling step runs "
             f"its kernels in bursts).", "",
             "| preset | T | variant | kernel (backend) | tokens/s | MFU | peak GiB | est./measured | compile s "
             "| beside |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    stopped = {tuple(s["case"]) for s in report.get("stopped_in") or []}
    for r in report["steps"]:
        def fmt(key, spec, scale=1.0, r=r):
            return format(r[key] * scale, spec) if r.get(key) is not None else "-"
        chose = "" if r.get("backend_agrees", True) else f"; torch chose {r['observed_backend']}"
        lines.append(f"| {r['preset']} | {r['seq_len']} | {r['variant']} | {r['kernel']} ({r['backend']}{chose}) | "
                     f"{fmt('tokens_per_s', ',.0f')} | {fmt('mfu', '.1%')} | {fmt('peak_bytes', '.2f', 2 ** -30)} | "
                     f"{fmt('estimate_vs_measured', '.2f')} | {fmt('first_step_s', '.0f')} | {beside_cell(r)} |"
                     + (f" {r['error']}" if r.get("error") else "")
                     + (f" (batch {r['batch_size']}, not {r['full_batch_size']}: the estimate at "
                        f"{r['full_batch_size']} exceeded the memory the cases share)"
                        if r.get("full_batch_size", r.get("batch_size")) != r.get("batch_size") else "")
                     + (" (retry alone queued, not run)" if r.get("retry_queued") and case_of(r) not in stopped
                        else " (its retry alone was stopped: below)" if r.get("retry_queued") else "")
                     + (f" (retried alone after: {r['retried_alone_after']})" if r.get("retried_alone_after") else ""))
    for entry in report.get("stopped_in") or []:
        (p, T, v), seconds = entry["case"], entry["seconds"]
        lines += ["", f"A steps worker stopped in {p}/T={T}/{v}{' (its retry alone)' if entry.get('retry') else ''}, "
                  f"{seconds:.0f} s after the case started (the deadline, its time limit, or a crash: see the "
                  f"phase's processes)"]
    not_run = [c for c in report["not_run"] if tuple(c) not in stopped]
    if not_run:
        lines += ["", "Not run (not reached by the deadline, or no worker left: see the phase's processes): "
                  + ", ".join(f"{p}/T={T}/{v}" for p, T, v in not_run)]
    observed = [r for r in report["steps"] if "backend_agrees" in r]
    wrong = [f"{r['preset']}/T={r['seq_len']}/{r['variant']}" for r in observed if not r["backend_agrees"]]
    lines += ["", f"SDPA backend as planned in {len(observed) - len(wrong)} of {len(observed)} cases"
              + (f"; not in: {', '.join(wrong)}" if wrong else ""), equality_line(report)]
    if report.get("cuda_tests"):
        lines.append(f"CUDA-only tests: {report['cuda_tests']['summary']}")
    if report.get("train"):
        lines.append(train_line(report["train"]))
    for phase, runs in report["processes"].items():
        if runs and not all(run.endswith("exit 0") for run in runs):  # [] for a failed train phase: its own line
            lines.append(f"Phase {phase}: {', '.join(runs)}")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["seed100m", "gqa100m"])
    p.add_argument("--seq-lens", nargs="+", type=int, default=[2048, 4096])
    p.add_argument("--variants", nargs="+", default=None, choices=available_variants())
    p.add_argument("--tokens-per-step", type=int, default=16_384, help="batch size = this // T")
    p.add_argument("--steps", type=int, default=5, help="timed steps after the compiling one (their median)")
    p.add_argument("--precision", choices=["bf16-mixed", "32-true"], default="bf16-mixed")
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--phases", nargs="+", choices=PHASES, default=list(PHASES))
    p.add_argument("--deadline-s", type=float, default=465,
                   help="seconds for the check after its imports (default: %(default)s, so that with "
                        "them and stopping the workers it ends within 8 minutes)")
    p.add_argument("--equality-s", type=float, default=90, help="at most this for the equality phase")
    p.add_argument("--tests-s", type=float, default=120, help="at most this for the CUDA-only tests")
    p.add_argument("--train-s", type=float, default=150,
                   help="at most this for the train phase (its compile shares the CPUs with the workers')")
    p.add_argument("--train-overrides", nargs="+", default=TRAIN_OVERRIDES,
                   help="train.py's overrides in the train phase (default: %(default)s)")
    p.add_argument("--workers", type=int, default=None,
                   help="steps workers compiling side by side, timing one at a time (default: a quarter of "
                        "the CPUs, at most 4, on CUDA; 1 on a CPU)")
    p.add_argument("--memory-gib", type=float, default=None,
                   help="what the estimates of the cases and phases running at once may add up to "
                        f"(default: {MEMORY_SHARE * 100:.0f}%% of the device's memory: room for each process's CUDA "
                        "context, the caching allocator's slack and the estimates' error)")
    p.add_argument("--train-reserve-gib", type=float, default=PHASE_RESERVE_GIB["train"],
                   help="GPU memory held for the train phase while it runs beside the steps workers "
                        "(default: %(default)s, above the estimate of the default --train-overrides)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "gpu_check")
    # Set by the check for the processes it starts:
    p.add_argument("--run-phase", choices=["equality", "steps"], help=argparse.SUPPRESS)
    p.add_argument("--part", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--until", type=float, help=argparse.SUPPRESS)
    p.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--shard", default="0/1", help=argparse.SUPPRESS)  # an equality process's share: "i/n"
    p.add_argument("--share-bytes", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.workers is None:
        args.workers = min(4, max(1, (os.cpu_count() or 1) // 4)) if args.device.startswith("cuda") else 1
    if args.workers < 1:
        p.error(f"--workers {args.workers}: at least 1")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error(f"--device {args.device}: no CUDA device is visible (torch {torch.__version__}); "
                f"on a CPU machine pass --device cpu for a smoke run (see the module docstring)")
    return args


def main(argv: list[str] | None = None) -> dict | None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":  # fp32 matmuls (SDPA's math backend computes bf16 in fp32) as train.py runs them
        torch.set_float32_matmul_precision(choose_matmul_precision("auto", "gpu"))
    if args.run_phase:  # a child process: one phase, its rows appended to --part
        phase = steps_phase if args.run_phase == "steps" else equality_phase
        sys.exit(phase(args, device, args.part, args.until))
    STOPPING.clear()  # a check run again in the same process (the tests) starts its children anew
    started = time.time()
    deadline = started + args.deadline_s
    args.out.mkdir(parents=True, exist_ok=True)
    steps_part = args.out / "part-steps.jsonl"
    equality_parts = [args.out / f"part-equality-{i}.jsonl" for i in range(EQUALITY_PROCESSES)]
    share_dir = share_dir_of(steps_part)
    clean_parts([steps_part, *equality_parts])
    order = cases(args.presets, args.seq_lens, variant_list(args))
    results, processes, tests, train = {}, {}, None, None
    reporting = threading.Lock()  # the steps pool's thread reports too

    def write_report() -> dict:
        # After every phase and steps case: a check stopped from outside keeps what it finished.
        with reporting:
            steps = latest_per_case(read_rows(steps_part), order)
            done = {case_of(r) for r in steps}
            report = {
                "command": "python bench/gpu_check.py " + " ".join(argv),
                "environment": {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else
                                f"cpu ({platform.machine()})", "torch": torch.__version__,
                                "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
                                "float32_matmul_precision": torch.get_float32_matmul_precision(),
                                "python": platform.python_version(), "cpus": os.cpu_count()},
                "precision": args.precision, "compiled": not args.no_compile, "phases": args.phases,
                "variants": variant_list(args), "deadline_s": args.deadline_s, "workers": args.workers,
                "timed_steps": args.steps, "memory_bytes": memory_bytes, "steps": steps,
                "stopped_in": stopped_cases(steps_part, steps),
                "not_run": [c for c in order if c not in done] if "steps" in args.phases else [],
                "equality": results.get("equality", []), "cuda_tests": tests, "train": train,
                "processes": dict(processes), "seconds": time.time() - started}
            with atomic_write(args.out / "gpu_check.json", encoding="utf-8") as f:
                json.dump(report, f, indent=2, default=str)
            with atomic_write(args.out / "gpu_check.md", encoding="utf-8") as f:
                f.write(markdown(report))
            return report

    memory_bytes = int(args.memory_gib * 2**30) if args.memory_gib else int(MEMORY_SHARE * device_total_bytes(device))
    gpu = SharedGpu(share_dir, memory_bytes)
    phases = [p for p in PHASES if p in args.phases and p != "steps"]

    def phases_need(remaining: list[str]) -> int:
        """The most any phase still to run holds: held from the start, shrunk as phases end, so
        that the workers never admit cases into memory a later phase needs."""
        return int(max([args.train_reserve_gib if p == "train" else PHASE_RESERVE_GIB[p] for p in remaining],
                       default=0) * 2**30)

    gpu.hold("phases", phases_need(phases))
    pool, pool_thread = None, None
    if "steps" in args.phases:  # beside the other phases, from the start: compiling is most of it
        print(f"== steps: {args.workers} worker(s) beside the other phases until the deadline", flush=True)
        pool = StepsPool([*argv, "--share-bytes", str(memory_bytes)], steps_part, deadline, args.workers,
                         on_rows=write_report, case_limit_s=case_limit_s(args))

        def steps_pool() -> None:
            processes["steps"] = pool.run()["processes"]

        pool_thread = threading.Thread(target=steps_pool, daemon=True)
        pool_thread.start()
    previous_sigterm = signal.signal(signal.SIGTERM, _exit_on_sigterm)  # so that `finally` stops the workers
    try:
        for done, phase in enumerate(phases, start=1):
            print(f"== {phase} ({deadline - time.time():.0f} s left)", flush=True)
            if phase == "cuda-tests":
                with gpu.phase(phase):
                    tests = cuda_tests(min(deadline, time.time() + args.tests_s))
                processes[phase] = ["exit 0" if tests["returncode"] == 0 else f"pytest: {tests['summary']}"]
            elif phase == "train":
                try:  # its steps train the GPU hard for a minute: no case is timed meanwhile
                    with gpu.timed_window("train", deadline), gpu.phase(phase):
                        train = train_phase(args.train_overrides, min(deadline, time.time() + args.train_s))
                except TimeoutError as err:
                    train = {"command": "python train.py " + " ".join(args.train_overrides), "returncode": None,
                             "seconds": 0.0, "error": f"not started: {err}"}
                processes[phase] = ["exit 0"] if train["returncode"] == 0 and "error" not in train else []
            else:
                with gpu.phase(phase):
                    results[phase], processes[phase] = equality_processes(
                        argv, equality_parts, min(deadline, time.time() + args.equality_s), variant_list(args))
            gpu.hold("phases", phases_need(phases[done:]))
            write_report()
        if pool_thread is not None:
            pool_thread.join()
        report = write_report()
    finally:
        signal.signal(signal.SIGTERM, previous_sigterm)
        if pool is not None:  # stopped from outside (an interrupt, SIGTERM): its workers' groups too
            pool.stop()
            pool_thread.join()
    clean_parts([steps_part, *equality_parts])
    print(markdown(report))
    return report


def case_limit_s(args: argparse.Namespace) -> float:
    """How long a steps case may run before its worker is taken for hung: a case that compiled
    while train.py trains waits for its timed steps until the train phase ends."""
    waits = args.train_s if "train" in args.phases else 0.0
    return max(CASE_LIMIT_S, waits + CASE_BEYOND_TRAIN_S)


def _exit_on_sigterm(signum, frame) -> None:
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    main()

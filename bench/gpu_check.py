"""The one prepared GPU check: every variant at the ~100M presets, bf16, compiled, on this GPU.

    python bench/gpu_check.py                 # on one H100/H200-class GPU: about 8 minutes
    python bench/gpu_check.py --device cpu --presets tiny --seq-lens 64 --tokens-per-step 128 \\
        --steps 1 --no-compile --precision 32-true --no-pytest   # a smoke run of the script itself

Writes ``<out>/gpu_check.json`` and ``<out>/gpu_check.md`` (the table for bench/RESULTS.md):

1. **Plan** per (preset, T, variant): the kernel and SDPA backend ``attnlab.plan`` predicts,
   and its estimate of peak training memory.
2. **Steps** per (preset, T, variant): a few training steps (forward, cross-entropy, backward,
   fused AdamW; ``bench/throughput.py``'s step) at ``--precision``, ``torch.compile``d: the first
   step's seconds (compilation), then tokens/s, MFU (``attnlab.flops``' FLOPs per token against
   the device's peak), peak memory (``torch.cuda.max_memory_allocated``) and its ratio to the
   plan's estimate. An out-of-memory case is recorded as such and the check goes on. Cases run
   in order of importance until ``--budget-s`` is spent; the rest are listed as not run.
3. **Fused = explicit** for every variant and every kernel it trains on here: logits and
   gradients of the same weights against the explicit kernel under the same precision, relative
   error at most ``EQUALITY_TOLERANCE``.
4. **The CUDA-only tests** (FlexAttention gradients against the explicit kernel; the memory
   estimate against a measured CUDA step): pytest's summary line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from attnlab.config import ModelConfig
from attnlab.flops import device_peak_flops, flops_per_token
from attnlab.model import build_model
from attnlab.params import variant_at_preset
from attnlab.plan import estimate_peak_bytes, kernel_plan
from variants import available_variants, get_variant
from variants.registry import supported_kernels

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/: the throughput bench's training step
from throughput import Contestant, _sync  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EQUALITY_TOLERANCE = 2e-2  # as tests/test_bf16.py: bf16's rounding (2^-8) x 5
CUDA_TESTS = ["tests/test_flex_kernel.py", "tests/test_plan.py"]


def autocast(device: torch.device, precision: str):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16-mixed")


def train_steps(config: ModelConfig, device: torch.device, precision: str, batch_size: int, steps: int,
                compile: bool) -> dict:
    """One warm-up (compiling) step, then ``steps`` timed ones, each ``throughput.Contestant``'s step."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        start_bytes = torch.cuda.memory_allocated(device)
    torch.manual_seed(0)
    contestant = Contestant(config.variant, build_model(config), device, precision, compile)
    T = config.block_size
    idx = torch.randint(0, config.vocab_size, (batch_size, T + 1), device=device)
    seconds = []
    for _ in range(steps + 1):
        _sync(device)
        start = time.perf_counter()
        contestant.step(idx[:, :-1], idx[:, 1:])
        _sync(device)
        seconds.append(time.perf_counter() - start)
    step = sorted(seconds[1:])[len(seconds[1:]) // 2]
    tokens_per_s = batch_size * T / step
    peak_flops = device_peak_flops(device, precision)
    result = {"first_step_s": seconds[0], "step_s": step, "tokens_per_s": tokens_per_s,
              "mfu": flops_per_token(config, T) * tokens_per_s / peak_flops if peak_flops else None}
    if device.type == "cuda":  # weights, AdamW state and the step's peak, as the plan estimates
        result["peak_bytes"] = torch.cuda.max_memory_allocated(device) - start_bytes
    return result


def equality(variant: str, device: torch.device, precision: str) -> list[dict]:
    """Every kernel ``variant`` trains on here against the explicit kernel, same weights."""
    shape = dict(vocab_size=512, block_size=256, n_layer=2, n_head=4, n_query_groups=2, n_embd=256,
                 intermediate_size=512, variant=variant)
    block = get_variant(variant)
    rows = []
    idx = torch.randint(0, shape["vocab_size"], (2, shape["block_size"] + 1), device=device)
    reference = None
    for kernel in ["explicit", *[k for k in supported_kernels(block, ModelConfig(**shape)) if k != "explicit"]]:
        if kernel == "flex" and device.type != "cuda":
            continue  # FlexAttention has no CPU backward
        torch.manual_seed(0)
        model = build_model(ModelConfig(**shape, attn_kernel=kernel)).to(device)
        if reference is not None:
            model.load_state_dict(reference[0])
        with autocast(device, precision):
            logits = model(idx[:, :-1])
        F.cross_entropy(logits.float().flatten(0, 1), idx[:, 1:].flatten()).backward()
        grad = torch.cat([p.grad.float().flatten() for p in model.parameters()])
        logits = logits.float().detach()
        if reference is None:
            reference = (model.state_dict(), logits, grad)
            continue
        logit_error = ((logits - reference[1]).abs().max() / reference[1].abs().max()).item()
        grad_error = ((grad - reference[2]).norm() / reference[2].norm()).item()
        rows.append({"variant": variant, "kernel": kernel, "logit_error": logit_error, "grad_error": grad_error,
                     "ok": logit_error <= EQUALITY_TOLERANCE and grad_error <= EQUALITY_TOLERANCE})
    return rows


def cuda_tests() -> dict:
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-m", "", *CUDA_TESTS], cwd=ROOT,
                            capture_output=True, text=True)
    lines = [line for line in result.stdout.strip().splitlines() if line.strip()]
    return {"command": f"python -m pytest -q -rs -m '' {' '.join(CUDA_TESTS)}", "returncode": result.returncode,
            "summary": lines[-1] if lines else result.stderr[-500:]}


def cases(presets: list[str], seq_lens: list[int], variants: list[str]) -> list[tuple[str, int, str]]:
    """(preset, T, variant) in order of importance: every variant at the first T, then the next."""
    return [(p, T, v) for T in seq_lens for p in presets for v in variants]


def run_case(preset: str, T: int, variant: str, args, device: torch.device) -> dict:
    config, reason = variant_at_preset(preset, variant)
    config = dataclasses.replace(config, block_size=T)  # the run's context: trainer.seq_len = T
    batch_size = max(1, args.tokens_per_step // T)
    plan = kernel_plan(config, T, batch_size, args.precision, device.type)
    row = {"preset": preset, "seq_len": T, "variant": variant, "batch_size": batch_size,
           "n_head": config.n_head, "shape_note": reason, "kernel": plan.kernel, "backend": plan.backend,
           "why": plan.why,
           "estimate_bytes": estimate_peak_bytes(config, T, batch_size, args.precision, plan, device.type)}
    try:
        row.update(train_steps(config, device, args.precision, batch_size, args.steps, not args.no_compile))
        if "peak_bytes" in row:
            row["estimate_vs_measured"] = row["estimate_bytes"] / row["peak_bytes"]
    except torch.OutOfMemoryError as err:
        row["error"] = f"out of memory: {str(err).splitlines()[0]}"
    except Exception as err:  # noqa: BLE001 - one failing case must not lose the others
        row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
        torch._dynamo.reset()
    return row


def markdown(report: dict) -> str:
    env = report["environment"]
    lines = [f"GPU check: {env['device']}, torch {env['torch']}, {report['precision']}, "
             f"{'compiled' if report['compiled'] else 'eager'}; `{report['command']}`", "",
             "| preset | T | variant | kernel (backend) | tokens/s | MFU | peak GiB | est./measured | compile s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in report["steps"]:
        def fmt(key, spec, scale=1.0, r=r):
            return format(r[key] * scale, spec) if r.get(key) is not None else "-"
        lines.append(f"| {r['preset']} | {r['seq_len']} | {r['variant']} | {r['kernel']} ({r['backend']}) | "
                     f"{fmt('tokens_per_s', ',.0f')} | {fmt('mfu', '.1%')} | {fmt('peak_bytes', '.2f', 2 ** -30)} | "
                     f"{fmt('estimate_vs_measured', '.2f')} | {fmt('first_step_s', '.0f')} |"
                     + (f" {r['error']}" if r.get("error") else ""))
    if report["not_run"]:
        lines += ["", f"Not run (budget of {report['budget_s']} s spent): "
                  + ", ".join(f"{p}/T={T}/{v}" for p, T, v in report["not_run"])]
    bad = [e for e in report["equality"] if not e["ok"]]
    lines += ["", f"Fused = explicit ({len(report['equality'])} variant-kernel pairs, tolerance "
              f"{EQUALITY_TOLERANCE:g}): " + ("all within" if not bad else "outside: " + ", ".join(
                  f"{e['variant']}/{e['kernel']} (logits {e['logit_error']:.3g}, grads {e['grad_error']:.3g})"
                  for e in bad))]
    if report.get("cuda_tests"):
        lines.append(f"CUDA-only tests: {report['cuda_tests']['summary']}")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["seed100m", "gqa100m"])
    p.add_argument("--seq-lens", nargs="+", type=int, default=[2048, 4096])
    p.add_argument("--variants", nargs="+", default=None, choices=available_variants())
    p.add_argument("--tokens-per-step", type=int, default=16_384, help="batch size = this // T")
    p.add_argument("--steps", type=int, default=3, help="timed steps after the compiling one")
    p.add_argument("--precision", choices=["bf16-mixed", "32-true"], default="bf16-mixed")
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--no-pytest", action="store_true", help="skip the CUDA-only tests")
    p.add_argument("--budget-s", type=float, default=360, help="seconds for the step cases")
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "gpu_check")
    args = p.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error(f"--device {args.device}: no CUDA device is visible (torch {torch.__version__}); "
                f"on a CPU machine pass --device cpu for a smoke run (see the module docstring)")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    variants = args.variants or available_variants()
    variants = ["baseline", *[v for v in variants if v != "baseline"]]
    started = time.perf_counter()
    steps, not_run = [], []
    for preset, T, variant in cases(args.presets, args.seq_lens, variants):
        if time.perf_counter() - started > args.budget_s:
            not_run.append((preset, T, variant))
            continue
        steps.append(run_case(preset, T, variant, args, device))
        print(json.dumps(steps[-1]), flush=True)
    equal = [row for variant in variants for row in equality(variant, device, args.precision)]
    report = {
        "command": "python bench/gpu_check.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "environment": {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else
                        f"cpu ({platform.machine()})", "torch": torch.__version__,
                        "cuda": torch.version.cuda, "python": platform.python_version()},
        "precision": args.precision, "compiled": not args.no_compile, "budget_s": args.budget_s,
        "steps": steps, "not_run": not_run, "equality": equal,
        "cuda_tests": None if args.no_pytest else cuda_tests(),
        "seconds": time.perf_counter() - started}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    (args.out / "gpu_check.md").write_text(markdown(report), encoding="utf-8")
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()

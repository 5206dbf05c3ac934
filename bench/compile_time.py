"""Cold compile time of a training step: the whole model compiled against each block on its own.

    python bench/compile_time.py                       # CPU (Inductor's C++ backend): ~15 min
    python bench/compile_time.py --device cuda --seq-len 2048 --precision bf16-mixed

``train.py`` compiles each block on its own (``GPT.compile_blocks``); the alternative is
``torch.compile`` of the whole model. For every variant and each way, a fresh process
builds the preset's model, compiles it with Inductor's caches pointed at an empty
directory (a cold start, as a new run on a new machine), and times its first training
step (forward, cross-entropy, backward; the step that compiles) and then ``--steps`` more.
Compile seconds = first - the median of the ``--steps`` steps after it, whose median is
also the step time once compiled. The two ways alternate per variant, so drifts in the
machine's load reach both; the ratios (compile: whole / blocks; step time: blocks / whole)
are reported per variant with their medians over variants.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
MODES = ("whole", "blocks")


def compile_and_step(preset: str, variant: str, mode: str, seq_len: int, batch_size: int, device: str,
                  precision: str, steps: int = 1) -> dict:
    """In this process: build, compile one way, time the first (compiling) step and ``steps`` more."""
    import torch.nn.functional as F

    from attnlab.model import build_model
    from attnlab.params import variant_at_preset

    config, _ = variant_at_preset(preset, variant)
    config = dataclasses.replace(config, block_size=seq_len)
    model = build_model(config).to(device)
    if mode == "blocks":
        model.compile_blocks()
    else:
        model.compile()
    idx = torch.randint(0, config.vocab_size, (batch_size, seq_len + 1), device=device)
    seconds = []
    for _ in range(1 + steps):
        start = time.perf_counter()
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
            logits = model(idx[:, :-1])
        F.cross_entropy(logits.float().flatten(0, 1), idx[:, 1:].flatten()).backward()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    step_s = statistics.median(seconds[1:])
    return {"first_step_s": seconds[0], "second_step_s": seconds[1], "step_s": step_s,
            "compile_s": seconds[0] - step_s}


def measure(args: argparse.Namespace, variant: str, mode: str) -> dict:
    """``compile_and_step`` in a fresh process with empty Inductor caches."""
    with tempfile.TemporaryDirectory(prefix="attnlab-compile-") as cache:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache, "TRITON_CACHE_DIR": str(Path(cache) / "triton"),
               "TORCHINDUCTOR_FX_GRAPH_CACHE": "0", "TORCHINDUCTOR_AUTOGRAD_CACHE": "0"}
        call = (f"import json, sys; sys.path.insert(0, {str(ROOT / 'bench')!r}); import compile_time; "
                f"print(json.dumps(compile_time.compile_and_step({args.preset!r}, {variant!r}, {mode!r}, "
                f"{args.seq_len}, {args.batch_size}, {args.device!r}, {args.precision!r}, {args.steps})))")
        done = subprocess.run([sys.executable, "-c", call], cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        return {"variant": variant, "mode": mode, "error": done.stderr.strip().splitlines()[-1:]}
    return {"variant": variant, "mode": mode, **json.loads(done.stdout.strip().splitlines()[-1])}


def main(argv: list[str] | None = None) -> dict:
    from variants import available_variants

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="gqa100m")
    p.add_argument("--variants", nargs="+", default=None, choices=available_variants())
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", choices=["32-true", "bf16-mixed"], default="32-true")
    p.add_argument("--steps", type=int, default=1, help="steps timed after the compiling one (median)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    rows, ratios, step_ratios = [], {}, {}
    for i, variant in enumerate(args.variants or available_variants()):
        pair = {}
        for mode in (MODES if i % 2 == 0 else MODES[::-1]):
            pair[mode] = measure(args, variant, mode)
            rows.append(pair[mode])
            print(json.dumps(pair[mode]), flush=True)
        if all("compile_s" in r for r in pair.values()):
            ratios[variant] = pair["whole"]["compile_s"] / pair["blocks"]["compile_s"]
            step_ratios[variant] = pair["blocks"]["step_s"] / pair["whole"]["step_s"]
    report = {"command": "python bench/compile_time.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "environment": {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                              "torch": torch.__version__, "python": platform.python_version()},
              "preset": args.preset, "seq_len": args.seq_len, "batch_size": args.batch_size,
              "device": args.device, "precision": args.precision, "rows": rows,
              "steps": args.steps, "whole_over_blocks": ratios, "step_blocks_over_whole": step_ratios,
              "median_whole_over_blocks": statistics.median(ratios.values()) if ratios else None}
    print("| variant | whole model: compile s | each block: compile s | whole / blocks | step s, blocks / whole |"
          "\n|---|---:|---:|---:|---:|")
    for variant, ratio in ratios.items():
        w, b = (next(r for r in rows if r["variant"] == variant and r["mode"] == m) for m in MODES)
        print(f"| {variant} | {w['compile_s']:.1f} | {b['compile_s']:.1f} | {ratio:.2f} | "
              f"{step_ratios[variant]:.3f} |")
    if ratios:
        print(f"median whole / blocks: {report['median_whole_over_blocks']:.2f} "
              f"[{min(ratios.values()):.2f}-{max(ratios.values()):.2f}]; step time blocks / whole: "
              f"{statistics.median(step_ratios.values()):.3f} "
              f"[{min(step_ratios.values()):.3f}-{max(step_ratios.values()):.3f}]")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


if __name__ == "__main__":
    main()

"""Training throughput per attention variant, and baseline against HF transformers' Llama.

    python bench/throughput.py                       # the default CPU cases (~10 min, 2 cores)
    python bench/throughput.py --preset seed100m --seq-len 2048 --batch-size 8 \\
        --precision bf16-mixed --compile --json bench/gpu.json

A training step is forward, cross-entropy over the padded vocabulary, backward and
AdamW, with the batch drawn from attnlab's own data pipeline (``TokenWindowDataset``
over a shard of random tokens) so that the data-loading share of a step is measured
too. Every variant and ``LlamaForCausalLM`` built with identical dimensions (the
``hf_llama`` row; install the ``bench`` extra) run in the same process, interleaved:
each round runs every contestant for ``--steps`` steps, in a rotated order, and we
report medians over the rounds. Ratios are medians of the per-round ratios, so slow
drifts in machine load cancel.

Peak memory: on CUDA, the contestant's parameters and AdamW state plus the peak of
``torch.cuda.max_memory_allocated`` above what was allocated before its steps. On CPU
the same, with the transient peak read from the process's resident set (``VmHWM`` in
``/proc/self/status``, reset before each measured round after returning freed heap
memory to the OS); it is an estimate that includes allocator slack.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import math
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from collections.abc import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnlab.attention import FLEX_CPU_LIMIT
from attnlab.config import PRESETS, ModelConfig
from attnlab.data import ShardIndex, TokenWindowDataset
from attnlab.data.shards import ShardWriter, dtype_for_vocab
from attnlab.flops import device_peak_flops, flops_per_token
from attnlab.model import build_model, parameters_without_gradient
from attnlab.params import MULTI_HEAD, variant_at_preset
from attnlab.plan import check_flex_head_size
from variants import available_variants

HF_NAME = "hf_llama"
FLEX_SUFFIX = "+flex"
# "cpu" counts this process's CPU seconds: with --threads 1 it measures the work of a
# step without the time other processes take from a shared machine (see RESULTS.md).
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
PRECISIONS = ("32-true", "bf16-mixed", "bf16-true")


@dataclass
class Case:
    preset: str
    seq_len: int
    batch_size: int
    steps: int  # measured steps per contestant per round
    rounds: int
    warmup: int = 1


# The default CPU cases: tiny at its block size, seed100m at T=512, small batches.
DEFAULT_CASES = [Case("tiny", 256, 8, steps=2, rounds=5, warmup=2),
                 Case("seed100m", 512, 1, steps=1, rounds=3, warmup=1)]


@dataclass
class Measurement:
    name: str
    step_s: list[float] = field(default_factory=list)  # per round: seconds per step
    data_s: list[float] = field(default_factory=list)  # per round: of which fetching the batch
    peak_mem_bytes: int | None = None
    n_params: int = 0
    flops_per_token: float | None = None


# --------------------------------------------------------------------------- contestants

def hf_llama(config: ModelConfig) -> nn.Module:
    """``LlamaForCausalLM`` with the dimensions of ``config``'s baseline model."""
    try:
        from transformers import LlamaConfig, LlamaForCausalLM
    except ImportError:
        raise SystemExit("the HF comparison needs transformers: pip install -e '.[bench]' "
                         "(or pass --no-hf)") from None
    if config.rope_n_elem != config.head_size:
        raise SystemExit("HF Llama rotates the whole head; use rotary_percentage=1.0 or --no-hf")
    hf_config = LlamaConfig(
        vocab_size=config.padded_vocab_size, hidden_size=config.n_embd,
        intermediate_size=config.mlp_hidden_size, num_hidden_layers=config.n_layer,
        num_attention_heads=config.n_head, num_key_value_heads=config.n_query_groups,
        head_dim=config.head_size, max_position_embeddings=config.block_size,
        rms_norm_eps=config.norm_eps, rope_theta=float(config.rope_base), attention_bias=False,
        mlp_bias=False, tie_word_embeddings=False, use_cache=False, attn_implementation="sdpa")
    return LlamaForCausalLM(hf_config)


class _HFLogits(nn.Module):
    """Token ids -> logits, so both models sit behind one call signature."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, idx: Tensor) -> Tensor:
        return self.model(input_ids=idx, use_cache=False).logits


def allow_compiled_models(n_models: int) -> None:
    """Let ``n_models`` compiled models of different variants share one process. Their blocks
    share ``Block.forward``, whose compiled entries Dynamo caps at ``recompile_limit`` (8); past
    it the other models would silently run eager. Four entries each: a bench model trains at one
    shape (one entry), the rest is margin."""
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 4 * n_models)


class Contestant:
    """One model with its optimizer; ``step(x, y)`` is one training step."""

    def __init__(self, name: str, model: nn.Module, device: torch.device, precision: str,
                 compile: bool) -> None:
        self.name = name
        self.device = device
        if precision == "bf16-true":
            model = model.to(torch.bfloat16)
        self.model = model.to(device).train()
        self.forward = self.model
        if compile and hasattr(model, "compile_blocks"):
            model.compile_blocks()  # as train.py compiles
        elif compile:
            self.forward = torch.compile(self.model)
        self.autocast = precision == "bf16-mixed"
        # fused=True is the fastest AdamW on CPU and GPU alike, and both contestants use it.
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4, fused=True)
        # Named at the first step: trainable parameters its backward left without a gradient.
        self.without_gradient: list[str] | None = None

    def step(self, x: Tensor, y: Tensor) -> None:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            logits = self.forward(x)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
        loss.backward()
        if self.without_gradient is None:
            self.without_gradient = parameters_without_gradient(self.model)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def state_bytes(self) -> int:
        """Parameters plus AdamW's two moments (gradients are transient, set to None)."""
        return 3 * sum(p.numel() * p.element_size() for p in self.model.parameters())


# --------------------------------------------------------------------------- data

@contextlib.contextmanager
def random_token_batches(vocab_size: int, seq_len: int, batch_size: int, n_batches: int,
                         seed: int = 0) -> Iterator[Callable[[torch.device], tuple[Tensor, Tensor]]]:
    """Batches from attnlab's data pipeline over a temporary shard of random tokens."""
    n_tokens = n_batches * batch_size * seq_len + 1
    tokens = np.random.default_rng(seed).integers(0, vocab_size, n_tokens)
    with tempfile.TemporaryDirectory(prefix="attnlab-bench-") as tmp:
        dtype = dtype_for_vocab(vocab_size)
        writer = ShardWriter(Path(tmp), "train", dtype, shard_tokens=n_tokens)
        writer.write(tokens, n_documents=1)
        shards = writer.close()
        index = ShardIndex(split="train", dtype=dtype.name, vocab_size=vocab_size, n_tokens=n_tokens,
                           n_documents=1, tokenizer_sha256="", bos_id=0, eos_id=0,
                           source="bench: uniform random tokens", key="bench", shards=shards)
        index.save(Path(tmp) / "train.json")
        dataset = TokenWindowDataset(Path(tmp) / "train.json", seq_len)
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True,
                                             drop_last=True,
                                             generator=torch.Generator().manual_seed(seed))
        batches = iter(())

        def next_batch(device: torch.device) -> tuple[Tensor, Tensor]:
            nonlocal batches
            try:
                x, y = next(batches)
            except StopIteration:
                batches = iter(loader)
                x, y = next(batches)
            return x.to(device, non_blocking=True), y.to(device, non_blocking=True)

        yield next_batch


# --------------------------------------------------------------------------- memory

class PeakMemory:
    """Peak bytes allocated while a block runs, above what was allocated before it."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._libc = None
        if device.type == "cpu" and sys.platform.startswith("linux"):
            with contextlib.suppress(OSError):
                self._libc = ctypes.CDLL("libc.so.6")

    @property
    def available(self) -> bool:
        return self.device.type == "cuda" or self._libc is not None

    @contextlib.contextmanager
    def measure(self) -> Iterator[dict[str, int]]:
        result: dict[str, int] = {}
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            before = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            yield result
            torch.cuda.synchronize(self.device)
            result["peak_above_start"] = torch.cuda.max_memory_allocated(self.device) - before
        elif self._libc is not None:
            self._libc.malloc_trim(0)  # hand freed heap pages back so the next peak is real
            before = _proc_status_kib("VmRSS")
            Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
            yield result
            result["peak_above_start"] = (_proc_status_kib("VmHWM") - before) * 1024
        else:
            yield result


def _proc_status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


# --------------------------------------------------------------------------- benchmark

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_case(case: Case, variants: list[str], device: torch.device, precision: str, compile: bool,
             with_hf: bool, clock: str = "wall", log: Callable[[str], None] = print,
             flex: list[str] = ()) -> dict:
    configs, references = variant_configs(case.preset, variants)
    # The same variant on FlexAttention instead of SDPA, as its own row ("qk_scale+flex").
    configs.update({f"{v}{FLEX_SUFFIX}": ModelConfig.from_preset(case.preset, variant=v, attn_kernel="flex")
                    for v in flex})
    base_config = ModelConfig.from_preset(case.preset)
    if case.seq_len > base_config.block_size:
        raise SystemExit(f"--seq-len {case.seq_len} exceeds block_size={base_config.block_size} "
                         f"of preset {case.preset!r}")
    if compile:
        allow_compiled_models(len(configs) + 1)
    contestants = {v: Contestant(v, build_model(c), device, precision, compile)
                   for v, c in configs.items()}
    if with_hf:
        torch.manual_seed(0)
        contestants[HF_NAME] = Contestant(HF_NAME, _HFLogits(hf_llama(base_config)), device,
                                          precision, compile)
    results = {name: Measurement(name, n_params=sum(p.numel() for p in c.model.parameters()))
               for name, c in contestants.items()}
    for v, c in configs.items():
        results[v].flops_per_token = flops_per_token(c, case.seq_len)
    gemm_s = gemm_seconds_per_step(contestants["baseline"].model, case, device, precision)
    if with_hf:  # the same dimensions as the baseline, hence the same formula
        results[HF_NAME].flops_per_token = flops_per_token(base_config, case.seq_len)
    memory = PeakMemory(device)
    now = CLOCKS[clock]
    names = list(contestants)
    n_batches = len(names) * (max(case.warmup, 1) + case.rounds * case.steps)

    with random_token_batches(base_config.vocab_size, case.seq_len, case.batch_size,
                              n_batches) as next_batch:
        for name in names:  # warm-up (allocator, autotuning, compilation); its last step's peak memory
            c = contestants[name]
            for _ in range(max(case.warmup, 1) - 1):
                c.step(*next_batch(device))
            batch = next_batch(device)
            with memory.measure() as mem:
                c.step(*batch)
            if "peak_above_start" in mem:
                results[name].peak_mem_bytes = c.state_bytes() + mem["peak_above_start"]
        _sync(device)
        for r in range(case.rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            for name in order:
                c, m = contestants[name], results[name]
                data_s = 0.0
                start = now()
                for _ in range(case.steps):
                    t0 = now()
                    x, y = next_batch(device)
                    data_s += now() - t0
                    c.step(x, y)
                _sync(device)
                m.step_s.append((now() - start) / case.steps)
                m.data_s.append(data_s / case.steps)
            log(f"  round {r + 1}/{case.rounds}: " + ", ".join(
                f"{n} {case.batch_size * case.seq_len / results[n].step_s[-1]:,.0f} tok/s" for n in names))
    return {**summarise(case, results, device, precision, with_hf, gemm_s, references), "clock": clock}


def variant_configs(preset: str, variants: list[str]) -> tuple[dict[str, ModelConfig], dict[str, str]]:
    """Each variant at ``preset``, and the baseline row it is compared with.

    A variant that cannot use the preset's shape (``diff_attn`` and ``talking_heads`` need
    several heads; ``tiny`` and ``seed100m`` have one) runs with ``MULTI_HEAD`` heads instead,
    against a baseline of that same shape (the row ``baseline@2heads``).
    """
    configs, references = {}, {}
    for v in variants:
        config, reason = variant_at_preset(preset, v)
        references[v] = "baseline"
        if reason is not None:
            references[v] = f"baseline@{MULTI_HEAD}heads"
            configs.setdefault(references[v], ModelConfig.from_preset(preset, n_head=MULTI_HEAD))
            references[references[v]] = references[v]
        configs[v] = config
    return configs, references


def gemm_seconds_per_step(model: nn.Module, case: Case, device: torch.device, precision: str,
                          repeats: int = 3) -> float:
    """Time the training step's matmuls alone: every ``nn.Linear`` of ``model`` at
    M = batch x seq_len rows, forward (M,in)x(in,out) and both backward products,
    each shape timed in isolation (median of ``repeats``) and summed over the layers.

    1 / this is a ceiling on tokens/s that no implementation of the same model can
    pass on this device without fewer or faster matmuls; it tells how much of a
    missed throughput target is the hardware's matmul speed and how much the rest
    of the step (attention, softmax, norms, optimizer, framework overhead).
    """
    dtype = torch.bfloat16 if precision.startswith("bf16") else torch.float32
    M = case.batch_size * case.seq_len
    shapes: dict[tuple[int, int], int] = {}
    for module in model.modules():
        if isinstance(module, nn.Linear):
            key = (module.in_features, module.out_features)
            shapes[key] = shapes.get(key, 0) + 1
    total = 0.0
    for (n_in, n_out), count in shapes.items():
        for a, b in (((M, n_in), (n_in, n_out)), ((M, n_out), (n_out, n_in)), ((n_out, M), (M, n_in))):
            x = torch.randn(a, device=device, dtype=dtype)
            y = torch.randn(b, device=device, dtype=dtype)
            x @ y  # warm-up
            times = []
            for _ in range(repeats):
                _sync(device)
                start = time.perf_counter()
                x @ y
                _sync(device)
                times.append(time.perf_counter() - start)
            total += count * statistics.median(times)
    return total


def summarise(case: Case, results: dict[str, Measurement], device: torch.device, precision: str,
              with_hf: bool, gemm_s: float, references: dict[str, str] | None = None) -> dict:
    tokens_per_step = case.batch_size * case.seq_len
    peak = device_peak_flops(device, precision)
    base = results.get("baseline")
    rows = {}
    for name, m in results.items():
        step_s = statistics.median(m.step_s)
        row = {
            "tokens_per_s": tokens_per_step / step_s,
            "step_s": step_s,
            "data_share": statistics.median(d / s for d, s in zip(m.data_s, m.step_s)),
            "peak_mem_mib": None if m.peak_mem_bytes is None else m.peak_mem_bytes / 2**20,
            "params": m.n_params,
            "flops_per_token": m.flops_per_token,
            "tflops_per_s": m.flops_per_token * tokens_per_step / step_s / 1e12,
            "mfu": None if peak is None else m.flops_per_token * tokens_per_step / step_s / peak,
        }
        reference = results.get((references or {}).get(name.removesuffix(FLEX_SUFFIX), "baseline"), base)
        if reference is not None:
            per_round = [s / b for s, b in zip(m.step_s, reference.step_s)]
            row["step_time_vs_baseline"] = statistics.median(per_round)
            row["step_time_vs_baseline_range"] = [min(per_round), max(per_round)]  # the spread over rounds
            row["compared_with"] = reference.name
        rows[name] = row
    out = {"case": asdict(case), "precision": precision, "device": _device_name(device),
           "peak_flops": peak, "results": rows, "gemm_s_per_step": gemm_s,
           "gemm_ceiling_tokens_per_s": tokens_per_step / gemm_s,
           "baseline_of_gemm_ceiling": gemm_s / rows["baseline"]["step_s"]}
    if with_hf and base is not None:
        out["baseline_vs_hf"] = statistics.median(
            h / b for h, b in zip(results[HF_NAME].step_s, base.step_s))  # tokens/s ratio
    return out


# --------------------------------------------------------------------------- reporting

def format_table(summary: dict) -> str:
    case = summary["case"]
    lines = [f"preset {case['preset']}, T={case['seq_len']}, batch {case['batch_size']}, "
             f"{summary['precision']}, {summary['device']}, {case['rounds']} rounds x "
             f"{case['steps']} steps (median), {summary.get('clock', 'wall')} clock", "",
             "| model | tokens/s | step (s) | step time vs baseline [range over rounds] | data share | peak mem (MiB) "
             "| params (M) | GFLOP/token | TFLOP/s | MFU |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in summary["results"].items():
        vs = _fmt(r.get("step_time_vs_baseline"), "{:.3f}")
        if "step_time_vs_baseline_range" in r and r.get("compared_with") != name:
            vs += " [{:.2f}-{:.2f}]".format(*r["step_time_vs_baseline_range"])
        if r.get("compared_with", "baseline") != "baseline":
            vs += f" (vs {r['compared_with']})"
        cells = [name, f"{r['tokens_per_s']:,.0f}", f"{r['step_s']:.3f}", vs, f"{r['data_share']:.2%}",
                 _fmt(r["peak_mem_mib"], "{:,.0f}"), f"{r['params'] / 1e6:.2f}",
                 f"{r['flops_per_token'] / 1e9:.4f}", f"{r['tflops_per_s']:.3f}",
                 _fmt(r["mfu"], "{:.1%}")]
        lines.append("| " + " | ".join(cells) + " |")
    if "baseline_vs_hf" in summary:
        lines += ["", f"baseline tokens/s / {HF_NAME} tokens/s = {summary['baseline_vs_hf']:.3f}"]
    if "gemm_s_per_step" in summary:
        lines += ["", f"matmul-only ceiling: the step's GEMMs alone take {summary['gemm_s_per_step']:.3f} s "
                      f"-> at most {summary['gemm_ceiling_tokens_per_s']:,.0f} tokens/s; baseline spends "
                      f"{summary['baseline_of_gemm_ceiling']:.0%} of its step in them"]
    return "\n".join(lines)


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else spec.format(value)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def environment() -> dict:
    env = {"torch": torch.__version__, "python": platform.python_version(),
           "threads": torch.get_num_threads(), "platform": platform.platform()}
    with contextlib.suppress(ImportError):
        import transformers
        env["transformers"] = transformers.__version__
    with contextlib.suppress(OSError):
        env["load_average_at_end"] = [round(x, 2) for x in __import__("os").getloadavg()]
    return env


def _flex_refusal(variant: str, preset: str) -> str | None:
    """Why ``variant`` cannot train on FlexAttention at ``preset`` on CUDA (its head size), or None."""
    try:
        check_flex_head_size(ModelConfig.from_preset(preset, variant=variant, attn_kernel="flex"))
    except ValueError as err:
        return str(err)
    return None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS),
                   help="model preset; without it, run the default CPU cases")
    p.add_argument("--seq-len", type=int, help="tokens per sequence (default: the preset's block size)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=2, help="measured steps per contestant per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1, help="unmeasured steps per contestant first")
    p.add_argument("--variants", nargs="+", default=None, choices=available_variants(),
                   help="variants to measure (default: all registered; baseline is always added)")
    p.add_argument("--no-hf", action="store_true", help="skip the transformers Llama comparison")
    p.add_argument("--flex", nargs="*", default=None, choices=available_variants(), metavar="VARIANT",
                   help="also run these variants on the FlexAttention kernel, as rows 'VARIANT+flex' "
                        "(default: qk_scale on CUDA, none on CPU, where FlexAttention cannot train)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="default: bf16-mixed on CUDA, 32-true on CPU")
    p.add_argument("--compile", action="store_true", help="torch.compile every contestant")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads on CPU")
    p.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                   help="wall time (default) or process CPU time (for shared machines, with --threads 1)")
    p.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    precision = args.precision or ("bf16-mixed" if device.type == "cuda" else "32-true")
    variants = args.variants or available_variants()
    variants = ["baseline", *[v for v in variants if v != "baseline"]]
    if args.preset is None:
        cases = DEFAULT_CASES
    else:
        seq_len = args.seq_len or PRESETS[args.preset]["block_size"]
        cases = [Case(args.preset, seq_len, args.batch_size, args.steps, args.rounds, args.warmup)]
    flex = args.flex
    if flex and device.type != "cuda":
        raise SystemExit(f"--flex {' '.join(flex)}: {FLEX_CPU_LIMIT}")
    refusals = [r for v in flex or [] for case in cases if (r := _flex_refusal(v, case.preset))]
    if refusals:
        raise SystemExit(f"--flex {' '.join(flex)}: {refusals[0]}")
    summaries = []
    for case in cases:
        print(f"\n== {case.preset}, T={case.seq_len}, batch {case.batch_size} ==", flush=True)
        # By default qk_scale's FlexAttention row, on CUDA at a head size its kernel takes.
        case_flex = flex if flex is not None else ["qk_scale"] * (
            device.type == "cuda" and "qk_scale" in available_variants() and not _flex_refusal("qk_scale", case.preset))
        summary = run_case(case, variants, device, precision, args.compile, not args.no_hf,
                           args.clock, log=lambda s: print(s, flush=True), flex=case_flex)
        summaries.append(summary)
        print("\n" + format_table(summary), flush=True)
    report = {"date": time.strftime("%Y-%m-%d"), "command": _portable_command(sys.argv),
              "environment": environment(), "compile": args.compile, "clock": args.clock,
              "cases": summaries}
    # Headline ratios at top level, for scripts: the worst case over the cases run
    # (lowest baseline_vs_hf, highest step time per variant); ``by_case`` has each case.
    hf_ratios = [s["baseline_vs_hf"] for s in summaries if "baseline_vs_hf" in s]
    if hf_ratios:
        report["baseline_vs_hf"] = min(hf_ratios)
    flex_rows = dict.fromkeys(row for s in summaries for row in s["results"] if row.endswith(FLEX_SUFFIX))
    report["step_time_vs_baseline"] = {
        v: max(s["results"][v]["step_time_vs_baseline"] for s in summaries if v in s["results"])
        for v in [*variants, *flex_rows]}
    report["by_case"] = {f"{s['case']['preset']}@T{s['case']['seq_len']}": {
        "baseline_vs_hf": s.get("baseline_vs_hf"),
        "step_time_vs_baseline": {n: r["step_time_vs_baseline"] for n, r in s["results"].items()
                                  if n != HF_NAME},
        "tokens_per_s": {n: r["tokens_per_s"] for n, r in s["results"].items()},
        "gemm_ceiling_tokens_per_s": s["gemm_ceiling_tokens_per_s"],
    } for s in summaries}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, default=_json_default) + "\n")
        print(f"\nwrote {args.json}")
    return report


def _portable_command(argv: list[str]) -> str:
    """The command line with no machine's paths: repository paths relative, others by file name."""
    root = Path(__file__).resolve().parents[1]

    def portable(arg: str) -> str:
        key, eq, value = arg.rpartition("=") if arg.startswith("-") else ("", "", arg)
        if not Path(value).is_absolute():
            return arg
        path = Path(value).resolve()
        value = path.relative_to(root).as_posix() if path.is_relative_to(root) else path.name
        return f"{key}{eq}{value}"

    return " ".join(portable(a) for a in argv)


def _json_default(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    raise TypeError(f"not JSON serialisable: {value!r}")


if __name__ == "__main__":
    main()

"""attnlab.plan: the kernel each variant trains on, the tensors it materialises, and the peak
memory estimate against a measured training step."""

import dataclasses
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from attnlab.config import ModelConfig
from attnlab.plan import (activation_bytes, check_fits_device, device_memory, estimate_peak_bytes, format_plan,
                          kernel_plan, main, new_saved_bytes, slow_kernel_warning)
from attnlab.params import total_parameters
from attnlab.training.config import TrainerSection
from variants import available_variants

ROOT = Path(__file__).resolve().parents[1]
# The estimate must lie within this factor of the measured peak: est / measured in [1/1.5, 1.5].
# Measured on this repository's CPUs (2 steps, fp32): ratios 0.83-1.05 across the 14 variants at
# SMALL, 0.70-1.14 at MAPS (allocator overhead is not modelled).
TOLERANCE = 1.5
SMALL = dict(vocab_size=8000, block_size=256, n_layer=4, n_head=2, n_embd=256, intermediate_size=1024)

# Peak resident memory (VmHWM) of two forward+backward+AdamW steps, less the resident memory after a
# warm-up step of a tiny model of the same variant (which maps the kernels' code pages).
MEASURE = textwrap.dedent("""
    import json, resource, sys
    import torch
    import torch.nn.functional as F
    from attnlab.config import ModelConfig
    from attnlab.model import build_model
    torch.set_num_threads(1)
    kw, B, T = json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    recompute = kw.pop("activation_checkpointing", False)

    def steps(config, B, T, n):
        idx = torch.randint(0, config.vocab_size, (B, T + 1))
        model = build_model(config)
        model.activation_checkpointing = recompute
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
        for _ in range(n):
            loss = F.cross_entropy(model(idx[:, :-1]).flatten(0, 1).float(), idx[:, 1:].flatten())
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()

    steps(ModelConfig(**{**kw, "vocab_size": 64, "n_layer": 1, "n_embd": 32, "intermediate_size": 32}), 1, 16, 2)
    base = rss()
    steps(ModelConfig(**kw), B, T, 2)
    # VmHWM, the peak of this process's own memory map: ru_maxrss would carry over the RSS of the
    # process that forked this one (pytest's, over a GiB late in the suite).
    with open("/proc/self/status") as f:
        peak = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    print(peak - base)
""")


def measured_cpu_peak(kw: dict, batch_size: int, seq_len: int) -> int:
    result = subprocess.run([sys.executable, "-c", MEASURE, json.dumps(kw), str(batch_size), str(seq_len)],
                            cwd=ROOT, capture_output=True, text=True, timeout=600,
                            env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    return int(result.stdout.strip().splitlines()[-1])


# Attention maps dominate: (B, H, T, S) = (2, 8, 1024, 1024), 64 MiB a map in fp32, against 8000 x 2048
# logits in SMALL at T=256. At SMALL, the float mask counted in every layer passed unseen.
MAPS = dict(SMALL, vocab_size=1000, block_size=1024, n_head=8)


@pytest.mark.slow  # a subprocess per case: torch's import and two training steps
@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("variant, backend, recompute, shape", [
    ("baseline", "cpu-flash", False, "small"), ("talking_heads", "explicit", False, "small"),
    ("qk_scale", "math", False, "small"), ("baseline", "cpu-flash", True, "small"),
    *[(variant, None, False, "maps") for variant in available_variants()]])  # a variant added here too
def test_estimate_is_within_tolerance_of_a_measured_cpu_step(variant, backend, recompute, shape):
    kw, B, T = ({**SMALL, "variant": variant}, 8, 256) if shape == "small" else ({**MAPS, "variant": variant}, 2, 1024)
    config = ModelConfig(**kw)
    assert backend is None or kernel_plan(config, T, B, "32-true", "cpu").backend == backend
    estimate = estimate_peak_bytes(config, T, B, "32-true", device_type="cpu", checkpointing=recompute)
    measured = measured_cpu_peak({**kw, "activation_checkpointing": recompute}, B, T)
    print(f"{variant} (activation checkpointing {recompute}): estimate {estimate / 2**20:.0f} MiB, "
          f"measured {measured / 2**20:.0f} MiB")
    assert 1 / TOLERANCE <= estimate / measured <= TOLERANCE, (estimate, measured)
    # The check can fail: weights, gradients and AdamW alone fall outside the band.
    assert 16 * total_parameters(config) < measured / TOLERANCE


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("variant", ["baseline", "talking_heads"])
def test_estimate_is_within_tolerance_of_a_measured_cuda_step(variant):
    from attnlab.model import build_model
    import torch.nn.functional as F

    config, B, T = ModelConfig(**{**SMALL, "variant": variant}), 8, 256
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    start = torch.cuda.memory_allocated()
    model = build_model(config).cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    idx = torch.randint(0, config.vocab_size, (B, T + 1), device="cuda")
    for _ in range(2):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(idx[:, :-1])
        F.cross_entropy(logits.flatten(0, 1).float(), idx[:, 1:].flatten()).backward()
        del logits
        opt.step()
        opt.zero_grad(set_to_none=True)
    measured = torch.cuda.max_memory_allocated() - start
    estimate = estimate_peak_bytes(config, T, B, "bf16-mixed", device_type="cuda")
    print(f"{variant}: estimate {estimate / 2**20:.0f} MiB, measured {measured / 2**20:.0f} MiB")
    assert 1 / TOLERANCE <= estimate / measured <= TOLERANCE, (estimate, measured)


def test_seed100m_head_size_is_not_flashable_and_sdpa_falls_back():
    bf16 = format_plan("seed100m", 512, 8, "h100", "bf16-mixed", ["baseline"])
    assert "head_size=620 is not flash-able" in bf16
    assert "backend math" in bf16  # 620 % 8 != 0: no memory-efficient kernel in bf16
    # The math backend computes bf16 inputs in fp32 (torch's default), so its maps are fp32.
    assert "math backend: probabilities (saved) (8x1x512x512, 4 B each) = 8.0 MiB" in bf16
    # The backward's transient maps are (B, H, T, S) ones, not the larger (B, H, T, 620) fp32 v.
    plan = kernel_plan(ModelConfig.from_preset("seed100m"), 512, 8, "bf16-mixed", "cuda")
    assert plan.transient_bytes == 3 * 4 * 8 * 1 * 512 * 512
    fp32 = format_plan("seed100m", 512, 8, "h100", "32-true", ["baseline"])
    assert "backend memory-efficient" in fp32  # 620 % 4 == 0


@pytest.mark.parametrize("precision, dtype", [("bf16-mixed", torch.bfloat16), ("32-true", torch.float32)])
@pytest.mark.parametrize("n_query_groups", [4, 2], ids=["mha", "gqa"])
def test_the_math_backend_tensors_are_what_torch_math_kernel_saves(precision, dtype, n_query_groups):
    """The plan's math-backend tensors against the bytes torch's math kernel saves for its
    backward (the kernel's code is the same on every device, so a CPU call reads it), new
    tensors only: q, k and v themselves are counted with the layer."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    B, T, H, hs = 2, 24, 4, 258  # head_size 258: neither flash nor memory-efficient on CUDA, bf16 or fp32
    config = ModelConfig(vocab_size=64, block_size=T, n_layer=1, n_head=H, n_query_groups=n_query_groups,
                         n_embd=H * hs, intermediate_size=64)
    plan = kernel_plan(config, T, B, precision, "cuda", kernel="sdpa")
    assert plan.backend == "math"
    q = torch.randn(B, H, T, hs, dtype=dtype, requires_grad=True)
    k, v = (torch.randn(B, n_query_groups, T, hs, dtype=dtype, requires_grad=True) for _ in range(2))
    with sdpa_kernel(SDPBackend.MATH):
        saved = new_saved_bytes(lambda: torch.nn.functional.scaled_dot_product_attention(
            q, k, v, is_causal=True, enable_gqa=True), (q, k, v))
    assert sum(t.nbytes for t in plan.extra if t.what.startswith("math backend")) == saved


@pytest.mark.parametrize("precision, dtype", [("bf16-mixed", torch.bfloat16), ("32-true", torch.float32)])
@pytest.mark.parametrize("n_query_groups", [4, 2], ids=["mha", "gqa"])
def test_the_math_backend_tensors_count_values_of_their_own_head_size(precision, dtype, n_query_groups):
    """diff_attn's values are twice its keys' head size: the v copies the math kernel saves (in
    fp32 under bf16, repeated under GQA) are of the values' size."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from attnlab.plan import _math_backend_tensors

    B, T, H, hs, vs = 2, 24, 4, 258, 516
    q = torch.randn(B, H, T, hs, dtype=dtype, requires_grad=True)
    k = torch.randn(B, n_query_groups, T, hs, dtype=dtype, requires_grad=True)
    v = torch.randn(B, n_query_groups, T, vs, dtype=dtype, requires_grad=True)
    with sdpa_kernel(SDPBackend.MATH):
        saved = new_saved_bytes(lambda: torch.nn.functional.scaled_dot_product_attention(
            q, k, v, is_causal=True, enable_gqa=True), (q, k, v))
    tensors = _math_backend_tensors(B, H, n_query_groups, T, T, hs, vs, 2 if precision == "bf16-mixed" else 4)
    assert sum(t.nbytes for t in tensors) == saved


@pytest.mark.parametrize("precision, dtype", [("bf16-mixed", torch.bfloat16), ("32-true", torch.float32)])
@pytest.mark.parametrize("n_query_groups", [4, 2], ids=["mha", "gqa"])
def test_with_a_sink_the_math_backend_tensors_are_what_the_sdpa_path_saves(precision, dtype, n_query_groups):
    """As above through attnlab's own SDPA call with a sink (one more key, a zero value): its
    concatenated k and v are new tensors, so a v saved as it is counts too."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from attnlab.attention import AttentionSpec, ScoreTerms, sdpa_attention

    B, T, H, hs = 2, 24, 4, 258
    config = ModelConfig(vocab_size=64, block_size=T, n_layer=1, n_head=H, n_query_groups=n_query_groups,
                         n_embd=H * hs, intermediate_size=64, variant="attn_sink")
    plan = kernel_plan(config, T, B, precision, "cuda", kernel="sdpa")
    assert plan.backend == "math"
    q = torch.randn(B, H, T, hs, dtype=dtype, requires_grad=True)
    k, v = (torch.randn(B, n_query_groups, T, hs, dtype=dtype, requires_grad=True) for _ in range(2))
    sink = torch.zeros(H, requires_grad=True)
    with sdpa_kernel(SDPBackend.MATH):
        saved = new_saved_bytes(lambda: sdpa_attention(q, k, v, AttentionSpec(normaliser="softmax_sink"),
                                                       ScoreTerms(sink=sink), scale=hs ** -0.5, q_offset=0),
                                (q, k, v, sink))
    # Everything the plan keeps per layer, the float mask included: the math backend does not keep it.
    assert sum(t.nbytes for t in plan.extra) == saved
    assert [t.what for t in plan.backward] == ["gradient of the float mask"]


def _attend_saved_bytes(attn, B: int, T: int, H: int, G: int, hs: int, dtype: torch.dtype) -> int:
    """What autograd saves in ``attn.attend`` at (B, T), beyond its inputs, as a training step
    under bf16-mixed (autocast) or fp32 runs it."""
    from attnlab.attention import NO_TERMS

    q = torch.randn(B, H, T, hs, dtype=dtype, requires_grad=True)
    k, v = (torch.randn(B, G, T, hs, dtype=dtype, requires_grad=True) for _ in range(2))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        return new_saved_bytes(lambda: attn.attend(q, k, v, NO_TERMS, 0, False), (q, k, v, *attn.parameters()))


@pytest.mark.parametrize("precision, dtype", [("bf16-mixed", torch.bfloat16), ("32-true", torch.float32)])
@pytest.mark.parametrize("n_query_groups", [4, 2], ids=["mha", "gqa"])
def test_talking_heads_keeps_what_its_own_attention_saves(precision, dtype, n_query_groups):
    """talking_heads computes its attention itself: the plan reads what its attend saves off
    autograd at two lengths; here, at another length and batch, against what it saves there."""
    from attnlab.model import build_model

    B, T, H, hs = 2, 24, 4, 16
    config = ModelConfig(vocab_size=64, block_size=T, n_layer=1, n_head=H, n_query_groups=n_query_groups,
                         n_embd=H * hs, intermediate_size=64, variant="talking_heads")
    plan = kernel_plan(config, T, B, precision, "cuda")
    assert plan.backend == "explicit"
    saved = _attend_saved_bytes(build_model(config).blocks[0].attn, B, T, H, n_query_groups, hs, dtype)
    # Read off one sequence, the boolean (T, S) mask the batch shares is counted once per sequence.
    assert sum(t.nbytes for t in plan.extra) == pytest.approx(saved + (B - 1) * T * T, rel=1e-3)
    # Written out: fp32 logits and normalised maps, the mixed weights at the inputs' dtype for the
    # values' matmul (the same device-independent tensors under bf16 autocast: the mixing runs
    # outside it), the boolean mask; k and v repeated to H heads.
    a = 4 if dtype == torch.float32 else 2
    copies = 2 * B * H * T * hs * a * (n_query_groups != H)
    assert saved == (4 + 4 + a) * B * H * T * T + T * T + copies


def test_a_users_variant_with_its_own_softmax_has_its_maps_counted():
    """A block that computes its attention itself is planned on its own kernel with the maps its
    attend keeps: a hand-written softmax keeps (B, H, T, S) maps that no fused path would."""
    from attnlab.attention import allowed_mask
    from attnlab.model import build_model
    from variants import register, unregister
    from variants.baseline import BaselineAttention

    @register("throwaway_own_softmax")
    class OwnSoftmax(BaselineAttention):
        kernels = ("explicit",)

        def attend(self, q, k, v, terms, q_offset, need_weights):
            logits = (q @ k.transpose(-2, -1)).float() * self.scale
            T, S = logits.shape[-2:]
            logits = logits.masked_fill(~allowed_mask(T, S, q_offset, None, q.device), float("-inf"))
            weights = torch.softmax(logits, dim=-1)
            return weights.to(v.dtype) @ v, (weights if need_weights else None)

    try:
        B, T, H, hs = 2, 40, 4, 16
        config = ModelConfig(vocab_size=64, block_size=T, n_layer=1, n_head=H, n_embd=H * hs,
                             intermediate_size=64, variant="throwaway_own_softmax")
        for precision, dtype in (("32-true", torch.float32), ("bf16-mixed", torch.bfloat16)):
            plan = kernel_plan(config, T, B, precision, "cuda", cudnn_first=True)
            assert (plan.kernel, plan.backend) == ("explicit", "explicit")
            saved = _attend_saved_bytes(build_model(config).blocks[0].attn, B, T, H, H, hs, dtype)
            assert sum(t.nbytes for t in plan.extra) == pytest.approx(saved + (B - 1) * T * T, rel=1e-3)
            assert saved > B * H * T * T * 4  # at least its fp32 probabilities
    finally:
        unregister("throwaway_own_softmax")


def test_under_gqa_a_masked_sdpa_call_gets_its_own_k_and_v_and_stays_fused():
    """CUDA's memory-efficient kernel refuses enable_gqa (SDPA would fall back to math): k and v
    are repeated to the query heads first, new tensors the plan counts."""
    config = ModelConfig.from_preset("gqa100m", variant="sliding_window")
    plan = kernel_plan(config, 1024, 2, "bf16-mixed", "cuda", kernel="sdpa")
    assert plan.backend == "memory-efficient"
    repeated = [t for t in plan.extra if "repeated to 12 heads" in t.what]
    assert [t.shape for t in repeated] == [(2, 12, 1024, 64)] * 2
    assert not [t for t in kernel_plan(ModelConfig.from_preset("gqa100m"), 1024, 2, "bf16-mixed", "cuda").extra
                if "repeated" in t.what]  # plain causal: flash takes GQA as it is
    # fp32 on CUDA: flash takes half precision only, so even plain causal GQA gets its own k and v.
    fp32 = kernel_plan(ModelConfig.from_preset("gqa100m"), 1024, 2, "32-true", "cuda")
    assert fp32.backend == "memory-efficient" and [t.shape for t in fp32.extra] == [(2, 12, 1024, 64)] * 2
    assert kernel_plan(ModelConfig.from_preset("gqa100m", variant="diff_attn"), 1024, 2, "bf16-mixed",
                       "cuda").backend == "memory-efficient"  # values of 2 x head_size: not flash


def test_sdpa_keeps_gqa_only_where_the_kernel_it_reaches_takes_it(monkeypatch):
    from attnlab import attention
    from attnlab.attention import AttentionSpec, explicit_attention, sdpa_attention, sdpa_takes_gqa

    bf16 = torch.bfloat16
    assert sdpa_takes_gqa("cuda", bf16, (64, 64, 64), unmasked=True)
    assert not sdpa_takes_gqa("cuda", bf16, (64, 64, 64), unmasked=False)  # a mask: memory-efficient
    assert not sdpa_takes_gqa("cuda", torch.float32, (64, 64, 64), unmasked=True)  # flash: half only
    assert not sdpa_takes_gqa("cuda", bf16, (64, 64, 128), unmasked=True)  # flash: one head size
    assert not sdpa_takes_gqa("cuda", bf16, (320, 320, 320), unmasked=True)
    assert sdpa_takes_gqa("cpu", torch.float32, (64, 64, 128), unmasked=False)  # CPU flash takes GQA
    # Where it does not (as on CUDA), the call gets k and v repeated to the query heads: query
    # head h reads key head h // (H / G), as enable_gqa and the explicit kernel do.
    calls = []
    real = attention.F.scaled_dot_product_attention

    def spy(q, k, v, **kwargs):
        calls.append((k.shape[1], v.shape[1], kwargs.get("enable_gqa", False)))
        return real(q, k, v, **kwargs)

    monkeypatch.setattr(attention.F, "scaled_dot_product_attention", spy)
    q, k, v = torch.randn(2, 6, 16, 8), torch.randn(2, 2, 16, 8), torch.randn(2, 2, 16, 8)
    spec = AttentionSpec(window=5)
    for takes in (True, False):
        monkeypatch.setattr(attention, "sdpa_takes_gqa", lambda *args, takes=takes: takes)
        fused, _ = sdpa_attention(q, k, v, spec, scale=0.3, q_offset=0)
        torch.testing.assert_close(fused, explicit_attention(q, k, v, spec, scale=0.3, q_offset=0)[0])
    assert calls == [(2, 2, True), (6, 6, False)]


def test_tiny_baseline_is_cudnn_on_hopper_flash_on_ampere_and_talking_heads_is_explicit_with_its_maps():
    assert "kernel sdpa, backend flash" in format_plan("tiny", 128, 8, "a100", "bf16-mixed", ["baseline"])
    text = format_plan("tiny", 128, 8, "h200", "bf16-mixed", ["baseline", "talking_heads"])
    assert "SDPA tries cuDNN's kernel first on this GPU" in text
    baseline, talking = text.split("\ntalking_heads")
    assert "kernel sdpa, backend cudnn" in baseline and "per layer" not in baseline
    assert "kernel explicit" in talking
    # (B, H, T, S) = (8, 2, 128, 128) maps: 0.25 MiB at one byte a pair; it keeps several
    assert re.search(r"its own attention's maps, saved .*\(8x2x128x128, [\d.]+ B each\) = \d\.\d MiB", talking)


def test_a_variants_own_per_token_activations_are_counted_and_the_attention_calls_are_not():
    from attnlab.plan import own_activation_bytes_per_token

    def own(variant: str, precision: str = "32-true") -> float:
        return own_activation_bytes_per_token(ModelConfig.from_preset("gqa100m", variant=variant), precision)

    state = torch.random.get_rng_state()
    # What differs only inside the attention call or its ScoreTerms is the kernel plan's to count.
    assert [own(v) for v in ("baseline", "alibi", "qk_scale", "softcap", "attn_sink")] == [0] * 5
    # qk_norm's RMSNorms of q and k (fp32 inside) and gelu_bias' two GELUs keep tensors of their own:
    # per token, at least one fp32 copy of q and k (H + G heads of hs), and the GELUs' inputs.
    c = ModelConfig.from_preset("gqa100m")
    assert own("qk_norm") >= 4 * (c.n_head + c.n_query_groups) * c.head_size
    assert own("gelu_bias") >= 4 * ((c.n_head + 2 * c.n_query_groups) * c.head_size + c.n_embd)
    assert own("gelu_bias", "bf16-mixed") < own("gelu_bias")  # the GELUs run in bf16 under autocast
    assert own("gated_attn") > 0
    # diff_attn's attend keeps tensors around its two kernel calls: at least its sub-norm's fp32
    # normalised output (n_head / 2 heads of 2 hs), besides the paired values it hands the kernel.
    assert own("diff_attn") >= 4 * c.n_embd
    # The q, k and v that qk_norm hands the kernel are the layer's own, as the baseline's are: in fp32
    # its norms keep only their normalised q and k (fp32) and their reciprocal RMS per head.
    assert own("qk_norm") == 4 * (c.n_head + c.n_query_groups) * (c.head_size + 1)
    assert torch.equal(torch.random.get_rng_state(), state)  # the probes draw from their own generator


def test_the_estimate_keeps_a_variants_own_activations_for_every_token_of_every_layer(monkeypatch):
    from attnlab import plan

    config = ModelConfig.from_preset("tiny", variant="gated_attn")
    own = plan.own_activation_bytes_per_token(config, "32-true")
    counted = estimate_peak_bytes(config, 64, 2, "32-true", device_type="cpu")
    monkeypatch.setattr(plan, "own_activation_bytes_per_token", lambda *args: 0.0)
    without = estimate_peak_bytes(config, 64, 2, "32-true", device_type="cpu")
    assert own > 0 and counted - without == pytest.approx(config.n_layer * 2 * 64 * own)
    monkeypatch.undo()
    # The plan prints it, so that the estimate's extra can be traced to it.
    text = format_plan("tiny", 64, 2, "cpu", "32-true", ["baseline", "gated_attn"])
    assert "own activations" not in text.split("\ngated_attn")[0]
    assert f"gated_attn's own activations outside the attention kernel (128 tokens, {own:,.0f} B each" in text


def test_qk_scale_on_cpu_sdpa_carries_its_term_in_a_dense_float_mask():
    plan = kernel_plan(ModelConfig.from_preset("tiny", variant="qk_scale"), 128, 4, "32-true", "cpu")
    assert (plan.kernel, plan.backend) == ("sdpa", "math")
    shapes = {t.what: t.shape for t in plan.extra}
    assert shapes["ScoreTerms.dense (the variant's own)"] == (4, 1, 128, 128)
    # The math backend keeps the probabilities, not the mask; the mask's gradient lives in one
    # layer's backward.
    assert "float mask (-inf and the terms)" not in shapes
    assert [(t.what, t.shape) for t in plan.backward] == [("gradient of the float mask", (4, 1, 128, 128))]


def test_the_cli_prints_every_variant(capsys):
    main(["--preset", "tiny", "--seq-len", "64", "--batch-size", "2", "--device", "cpu"])
    out = capsys.readouterr().out
    for name in ("baseline", "talking_heads", "qk_scale", "sigmoid_attn"):
        assert f"\n{name}" in out
    assert "peak estimate" in out


@pytest.mark.parametrize("args, message", [
    (["--device", "b100"], "argument --device: unknown device 'b100'; known: cpu, a10, "),
    (["--variant", "gelu_bais"], "argument --variant: invalid choice: 'gelu_bais'"),
    (["--batch-size", "-1"], "argument --batch-size: '-1' is not a positive integer"),
    (["--seq-len", "0"], "argument --seq-len: '0' is not a positive integer"),
    (["--seq-len", "8192"], "--seq-len 8192 exceeds preset 'tiny''s block_size=256; allowed: --seq-len <= 256"),
])
def test_the_cli_refuses_bad_input_naming_the_argument(args, message, capsys):
    defaults = {"--preset": "tiny", "--seq-len": "64", "--batch-size": "2", "--device": "cpu"}
    given = dict(zip(args[::2], args[1::2]))
    with pytest.raises(SystemExit) as exit_info:
        main([item for key, value in {**defaults, **given}.items() for item in (key, value)])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_every_named_gpu_has_its_memory_and_compute_capability():
    from attnlab.cudnn_sdpa import NAMED_CAPABILITIES
    from attnlab.plan import DEVICE_MEMORY

    assert set(DEVICE_MEMORY) == set(NAMED_CAPABILITIES)
    assert "b200" in DEVICE_MEMORY  # named in the README beside the H100 and H200


def test_device_memory_table_and_cpu_ram():
    assert device_memory("h100") == 80 * 2**30
    assert device_memory("cpu") > 2**28
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        device_memory("tpu")
    assert device_memory("A100_40") == device_memory("a100-40") == 40 * 2**30  # as device_key spells it


def test_every_named_gpu_has_both_its_memory_and_its_compute_capability():
    # The plan reads memory from one table and whether torch tries cuDNN first from the other.
    from attnlab.cudnn_sdpa import NAMED_CAPABILITIES
    from attnlab.plan import DEVICE_MEMORY

    assert set(DEVICE_MEMORY) == set(NAMED_CAPABILITIES)


def test_check_fits_device_refuses_naming_estimate_memory_and_settings_that_fit():
    config = ModelConfig.from_preset("tiny")
    trainer = TrainerSection(batch_size=8, accumulate_grad_batches=2, seq_len=256, precision="bf16-mixed")
    need = estimate_peak_bytes(config, 256, 8, "bf16-mixed")
    check_fits_device(config, trainer, "h100")  # fits: no error
    small = (need + estimate_peak_bytes(config, 256, 2, "bf16-mixed")) // 2
    with pytest.raises(ValueError) as err:
        check_fits_device(config, trainer, "fake-gpu", memory_bytes=small)
    message = str(err.value)
    assert f"{need:,} bytes" in message and f"{small:,} bytes" in message
    assert "trainer.batch_size=" in message and "trainer.accumulate_grad_batches=" in message
    assert "same global batch of 16" in message and "trainer.seq_len=" in message
    # Each suggestion does fit.
    fits = message.split("settings that fit: ")[1]
    micro = int(fits.split("trainer.batch_size=")[1].split()[0])
    assert 16 % micro == 0 and estimate_peak_bytes(config, 256, micro, "bf16-mixed") <= small
    seq = int(fits.split("trainer.seq_len=")[1].split()[0])
    assert estimate_peak_bytes(config, seq, 8, "bf16-mixed") <= small


def test_a_head_size_no_fused_kernel_takes_is_warned_about_and_a_flashable_one_is_not():
    study = ModelConfig.from_preset("seed100m")  # one head of 620 per layer
    warning = slow_kernel_warning(study, 512, 8, "bf16-mixed")
    assert warning is not None and "head_size=620 is not flash-able" in warning
    assert "math backend" in warning and "model.attn_kernel=flex" not in warning  # 620 > flex's 256 too
    # 620 = 4 x 155: no head count gives a multiple of 8, so the advice is another width
    assert ("which no model.n_head gives at model.n_embd=620 (a different model, e.g. model.n_embd=640 "
            "model.n_head=5)") in warning
    assert slow_kernel_warning(ModelConfig.from_preset("tiny"), 128, 8, "bf16-mixed") is None
    # qk_scale forced onto SDPA at head size 100: its float mask goes to math at bf16 (100 is not a
    # multiple of 8), while FlexAttention would take it.
    odd = ModelConfig(vocab_size=64, block_size=512, n_layer=1, n_head=4, n_embd=400, intermediate_size=64,
                      variant="qk_scale", attn_kernel="sdpa")
    odd_warning = slow_kernel_warning(odd, 512, 8, "bf16-mixed")
    assert "model.attn_kernel=flex" in odd_warning
    assert "(model.n_head=2 or 5 or 10 at model.n_embd=400)" in odd_warning  # head sizes 200, 80, 40


def test_before_sm80_flash_and_bf16_are_not_planned_and_auto_precision_is_16_mixed():
    """A T4 or V100 (Colab's free GPU is a T4): no flash kernel, no bf16 tensor cores."""
    tiny = ModelConfig.from_preset("tiny")
    text = format_plan("tiny", 128, 8, "t4", "auto", ["baseline"])
    assert "16-mixed, device t4" in text
    assert ("backend memory-efficient: flash needs compute capability 8.0 or later (this GPU's: 7.5)"
            in text)
    forced = format_plan("tiny", 128, 8, "v100", "bf16-mixed", ["baseline"])
    assert "v100 (compute capability 7.0) has no bf16 tensor cores" in forced
    assert "backend math" in forced and "memory-efficient takes bf16 only from compute capability 8.0" in forced
    assert kernel_plan(tiny, 128, 8, "bf16-mixed", "cuda", capability=(7, 5)).backend == "math"
    assert kernel_plan(tiny, 128, 8, "bf16-mixed", "cuda", capability=(8, 0)).backend == "flash"
    assert "bf16 tensor cores" not in format_plan("tiny", 128, 8, "a100", "auto", ["baseline"])


@pytest.mark.parametrize("native_bf16, capability, precision", [
    (True, (8, 0), "bf16-mixed"), (False, (7, 5), "16-mixed"), (False, (6, 1), "32-true")])
def test_auto_precision_is_the_gpus_own_half_precision(monkeypatch, native_bf16, capability, precision):
    from attnlab.training.hardware import choose_precision

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True:
                        native_bf16 or including_emulation)  # torch's default counts emulation
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert choose_precision("auto", "gpu") == precision
    assert choose_precision("auto", "cpu") == "32-true" and choose_precision("32-true", "gpu") == "32-true"


def test_flex_is_planned_only_at_head_sizes_its_cuda_kernel_compiles_and_forcing_it_elsewhere_is_refused():
    from attnlab.plan import check_flex_head_size

    study = ModelConfig.from_preset("seed100m", variant="qk_scale")  # one head of 620: staged as 1024
    plan = kernel_plan(study, 512, 8, "bf16-mixed", "cuda")
    assert (plan.kernel, plan.backend) == ("sdpa", "math")
    assert plan.why.startswith("FlexAttention's CUDA kernel takes head sizes up to 256: head size 620 is staged "
                               "as 1024")
    assert kernel_plan(ModelConfig.from_preset("gqa100m", variant="qk_scale"), 512, 8, "bf16-mixed",
                       "cuda").kernel == "flex"  # heads of 64
    forced = dataclasses.replace(study, attn_kernel="flex")
    assert kernel_plan(forced, 512, 8, "bf16-mixed", "cuda").backend == "none (refused)"
    with pytest.raises(ValueError) as err:
        check_flex_head_size(forced)
    assert str(err.value).startswith("model.attn_kernel=flex cannot train variant 'qk_scale' at head_size=620 on "
                                     "a GPU: FlexAttention's CUDA kernel takes head sizes up to 256")
    assert "use model.attn_kernel=auto (the default), sdpa or explicit" in str(err.value)
    with pytest.raises(ValueError, match=r"use model.attn_kernel=auto \(the default\) or explicit,"):  # no sdpa
        check_flex_head_size(dataclasses.replace(forced, variant="softcap"))
    check_flex_head_size(study)  # auto: nothing to refuse
    check_flex_head_size(ModelConfig.from_preset("gqa100m", variant="qk_scale", attn_kernel="flex"))
    # softcap: FlexAttention would take the cap, SDPA cannot: the explicit kernel, warned about.
    capped = ModelConfig.from_preset("seed100m", variant="softcap")
    plan = kernel_plan(capped, 512, 8, "bf16-mixed", "cuda")
    assert plan.kernel == "explicit" and plan.why.endswith("is staged as 1024, whose tiles need more shared memory "
                                                          "than an H100 gives a kernel, so its compile fails; SDPA "
                                                          "cannot express it")
    assert slow_kernel_warning(capped, 512, 8, "bf16-mixed").startswith(
        "variant 'softcap' attends on the explicit kernel (FlexAttention's CUDA kernel takes head sizes up to 256")
    # sigmoid_attn: no fused kernel at any head size, so neither the head size nor a warning.
    sigmoid = ModelConfig.from_preset("seed100m", variant="sigmoid_attn")
    assert kernel_plan(sigmoid, 512, 8, "bf16-mixed", "cuda").why == "no fused kernel expresses it"
    assert slow_kernel_warning(sigmoid, 512, 8, "bf16-mixed") is None
    # diff_attn's values are pairs of heads: 2 x 160 = 320 is above 256 though its keys are not.
    pairs = ModelConfig(vocab_size=64, block_size=64, n_layer=1, n_head=4, n_embd=640, intermediate_size=64,
                        variant="diff_attn", attn_kernel="flex")
    with pytest.raises(ValueError, match="head size 320 is staged as 512"):
        check_flex_head_size(pairs)


@pytest.mark.parametrize("variant, kernel, n_query_groups, planned", [
    ("baseline", "auto", 4, "cpu-flash"),
    ("qk_scale", "sdpa", 4, "math"),  # its float mask needs a gradient: only math gives one
    ("sliding_window", "sdpa", 2, "cpu-flash"),  # GQA and a mask: k and v repeated, still fused
    ("talking_heads", "auto", 4, "explicit"),
])
def test_the_backend_a_forward_calls_is_the_planned_one(variant, kernel, n_query_groups, planned):
    from attnlab.model import build_model
    from attnlab.observed_kernel import agrees_with_plan, observed_backends

    config = ModelConfig(vocab_size=64, block_size=32, n_layer=1, n_head=4, n_query_groups=n_query_groups,
                         n_embd=64, intermediate_size=64, variant=variant, attn_kernel=kernel)
    assert kernel_plan(config, 32, 2, "32-true", "cpu").backend == planned
    seen = observed_backends(build_model(config), torch.randint(0, 64, (2, 32)))
    assert agrees_with_plan(planned, seen), seen
    assert not agrees_with_plan("memory-efficient", seen)


def test_flex_attention_runs_under_the_backend_recorder_and_shows_no_sdpa_op():
    # FlexAttention is a higher-order operator: the recorder must let it through, not fail.
    from torch.nn.attention.flex_attention import flex_attention

    from attnlab.observed_kernel import agrees_with_plan, observed_backends

    class Flex(torch.nn.Module):
        def forward(self, x):
            return flex_attention(x, x, x)

    # Eager flex_attention compiles an internal wrapper: a cache from earlier tests would recompile
    # it here, and Dynamo's recompilation report fails under a dispatch mode (torch 2.13).
    torch._dynamo.reset()
    with torch.no_grad():
        seen = observed_backends(Flex(), torch.randn(1, 2, 16, 8))
    assert agrees_with_plan("fused (flex)", seen)


def test_bf16_true_keeps_weights_gradients_and_adamw_state_in_bf16():
    """trainer.precision=bf16-true is accepted by the config, so the GPU checks before training
    (slow_kernel_warning, check_fits_device) must plan it: 8 bytes a parameter, not 18."""
    config = ModelConfig.from_preset("tiny", variant="qk_scale")
    mixed, true = (estimate_peak_bytes(config, 64, 2, p, device_type="cuda") for p in ("bf16-mixed", "bf16-true"))
    assert mixed - true == 10 * total_parameters(config)
    assert kernel_plan(config, 64, 2, "bf16-true", "cuda", "sdpa").backend == "memory-efficient"
    slow_kernel_warning(config, 64, 2, "bf16-true")
    with pytest.raises(ValueError, match="precision must be bf16-mixed, 16-mixed, bf16-true"):
        activation_bytes("8-true")


def test_flex_counts_the_full_gradient_of_a_dense_term_that_broadcasts_over_heads():
    """qk_scale's (B, 1, T, S) term reaches FlexAttention expanded to every head; torch accumulates
    its gradient at (B, H, T, S) in fp32, cast to the term's dtype, in that layer's backward."""
    config = ModelConfig.from_preset("tiny", variant="qk_scale", attn_kernel="flex", n_head=4, n_query_groups=4)
    plan = kernel_plan(config, 64, 2, "bf16-mixed", "cuda")
    assert [(t.shape, t.bytes_per_element) for t in plan.backward] == [((2, 4, 64, 64), 6)]
    assert plan.transient_bytes == 3 * 4 * 2 * 1 * 64 * 64 + 6 * 2 * 4 * 64 * 64
    one_head = ModelConfig.from_preset("tiny", variant="qk_scale", attn_kernel="flex", n_head=1, n_query_groups=1)
    assert kernel_plan(one_head, 64, 2, "bf16-mixed", "cuda").backward == ()  # nothing to expand
    assert "in one layer's backward: gradient of the expanded dense term" in format_plan(
        "gqa100m", 64, 2, "h100", "bf16-mixed", ["qk_scale"])
    alibi = kernel_plan(ModelConfig.from_preset("tiny", variant="alibi"), 64, 2, "bf16-mixed", "cuda")
    assert alibi.kernel == "flex" and alibi.backward == ()  # per-position terms: small gradients

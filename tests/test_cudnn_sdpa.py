"""cuDNN's SDPA kernel: torch's rule for when it goes first, attnlab's rule for the calls it is kept
off (a mask, head sizes over 128), and that every SDPA call obeys it, eager and compiled.

On CPU the rule's wiring is checked by letting it apply to CPU calls too (``_rule_on_cpu``); the
tests named *cuda* run where a GPU is (``bench/gpu_check.py`` runs them)."""

import pytest
import torch
from torch.nn.attention import SDPBackend

import attnlab.attention
from attnlab.attention import AttentionSpec, sdpa_attention
from attnlab import cudnn_sdpa
from attnlab.cudnn_sdpa import WITHOUT_CUDNN, call_backends, keeps_cudnn_out, prefers_cudnn, torch_prefers_cudnn
from attnlab.generate import SamplingConfig, generate
from attnlab.model import build_model
from attnlab.observed_kernel import observed_backends
from attnlab.plan import kernel_plan
from conftest import supported_config, tiny_config
from variants import available_variants

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.parametrize("capability, cudnn, expected", [
    ((9, 0), 91900, True),    # H100/H200 with torch 2.11's bundled cuDNN
    ((10, 0), 91501, True),   # B200
    ((10, 3), 91900, True),   # B300
    ((9, 0), 91500, False),   # cuDNN 9.15.0 itself: torch wants newer
    ((9, 0), 91002, False),   # an older cuDNN (a wheel for another CUDA)
    ((8, 0), 91900, False),   # A100
    ((8, 9), 91900, False),   # L4, RTX 4090
    ((12, 0), 91900, False),  # consumer Blackwell
    ((9, 0), None, False),    # torch without cuDNN
])
def test_torch_prefers_cudnn_on_hopper_and_datacenter_blackwell_with_a_new_cudnn(capability, cudnn, expected):
    assert torch_prefers_cudnn(capability, cudnn) is expected


def test_the_environment_and_deterministic_algorithms_put_cudnn_back():
    assert not torch_prefers_cudnn((9, 0), 91900, deprioritized=True)
    assert not torch_prefers_cudnn((9, 0), 91900, deterministic=True)


def test_named_gpus_use_their_capability_and_the_wheels_cudnn():
    assert prefers_cudnn("h100") and prefers_cudnn("H200")
    assert not any(prefers_cudnn(name) for name in ("a100", "l4", "rtx4090", "a10", "v100", "t4", "cpu"))


@pytest.fixture
def _hopper_present(monkeypatch):
    """An H100 with torch 2.11's cuDNN, as ``prefers_cudnn("cuda")`` reads one; deterministic
    algorithms off (Lightning's CPU trainer turns them on and leaves them on), restored after."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 91900)
    monkeypatch.delenv("TORCH_CUDNN_SDPA_DEPRIORITIZED", raising=False)
    was = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(False)
    yield monkeypatch
    torch.use_deterministic_algorithms(was[0], warn_only=was[1])


def test_the_gpu_present_is_read_with_its_cudnn_and_environment(_hopper_present):
    assert prefers_cudnn("cuda") and prefers_cudnn("cuda:0")
    _hopper_present.setenv("TORCH_CUDNN_SDPA_DEPRIORITIZED", "1")
    assert not prefers_cudnn("cuda")
    _hopper_present.delenv("TORCH_CUDNN_SDPA_DEPRIORITIZED")
    _hopper_present.setattr(torch.backends.cudnn, "version", lambda: 91400)
    assert not prefers_cudnn("cuda")


def test_deterministic_algorithms_put_flash_first_unless_warn_only(_hopper_present):
    torch.use_deterministic_algorithms(True)
    assert not prefers_cudnn("cuda")
    torch.use_deterministic_algorithms(True, warn_only=True)
    assert prefers_cudnn("cuda")


def test_cudnn_takes_only_full_causal_calls_up_to_head_size_128_on_cuda():
    assert call_backends("cuda", full_causal=True, head_sizes=(64, 64)) is None  # torch chooses: cuDNN may take it
    assert call_backends("cuda", full_causal=True, head_sizes=(128, 128)) is None
    assert call_backends("cuda", full_causal=False, head_sizes=(64, 64)) == WITHOUT_CUDNN  # a mask, or decoding
    assert call_backends("cuda", full_causal=True, head_sizes=(160, 160)) == WITHOUT_CUDNN
    assert call_backends("cuda", full_causal=True, head_sizes=(64, 256)) == WITHOUT_CUDNN
    assert call_backends("cpu", full_causal=False, head_sizes=(620, 620)) is None
    assert SDPBackend.CUDNN_ATTENTION not in WITHOUT_CUDNN and SDPBackend.MATH in WITHOUT_CUDNN
    assert keeps_cudnn_out(False, (16, 16)) and not keeps_cudnn_out(True, (16, 16))


@pytest.fixture
def _rule_on_cpu(monkeypatch):
    """attnlab's rule applied to CPU calls, with the calls it is asked about recorded."""
    asked = []

    def rule(device_type, full_causal, head_sizes):
        asked.append((full_causal, tuple(head_sizes)))
        return call_backends("cuda", full_causal, head_sizes)

    monkeypatch.setattr(attnlab.attention, "call_backends", rule)
    return asked


def test_every_sdpa_call_asks_the_rule_with_its_shape_and_head_sizes(_rule_on_cpu):
    idx = torch.randint(0, 100, (2, 16))
    for variant, full_causal in (("baseline", True), ("qk_scale", False), ("sliding_window", False),
                                 ("attn_sink", False)):
        _rule_on_cpu.clear()
        build_model(tiny_config(variant, attn_kernel="sdpa"))(idx)
        assert _rule_on_cpu == [(full_causal, (8, 8))] * 2, variant  # a call per layer


def test_decoding_steps_are_not_full_causal_calls(_rule_on_cpu):
    model = build_model(tiny_config("baseline", attn_kernel="sdpa")).eval()
    with torch.no_grad():
        generate(model, [5, 6, 7, 8, 9], 100, SamplingConfig(max_new_tokens=3, greedy=True))
    # the prompt: one full causal call per layer; each later token (2 of 3): one per layer against the cache
    assert _rule_on_cpu == [(True, (8, 8))] * 2 + [(False, (8, 8))] * 2 * 2, _rule_on_cpu


def test_the_rule_decides_the_backend_a_call_runs_on(monkeypatch):
    model = build_model(tiny_config("baseline", attn_kernel="sdpa"))
    idx = torch.randint(0, 100, (2, 16))
    assert observed_backends(model, idx) == {"cpu-flash"}  # torch's choice
    monkeypatch.setattr(attnlab.attention, "call_backends", lambda *a: [SDPBackend.MATH])
    assert observed_backends(model, idx) == set()  # the math backend: no fused op


@pytest.mark.slow  # torch.compile
@pytest.mark.parametrize("variant", ["qk_scale", "attn_sink", "baseline"])
def test_a_compiled_model_traces_the_rule_without_a_graph_break(_rule_on_cpu, variant):
    """The backend choice is a context manager around each masked call: Dynamo must trace it into
    the graph (fullgraph), forward and backward, with the same numbers as eager."""
    torch._dynamo.reset()
    model = build_model(tiny_config(variant, attn_kernel="sdpa"))
    idx = torch.randint(0, 100, (2, 16))
    eager = model(idx)
    eager.square().mean().backward()
    eager_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)(idx)
    compiled.square().mean().backward()
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)
    for got, want in zip((p.grad for p in model.parameters()), eager_grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    assert _rule_on_cpu  # asked while tracing


def test_the_plan_names_cudnn_only_where_the_rule_lets_it_run():
    baseline = tiny_config("baseline", n_embd=256, block_size=128)  # heads of 64
    wide = tiny_config("baseline", n_embd=640, block_size=128)  # heads of 160
    masked = tiny_config("qk_scale", n_embd=256, block_size=128, attn_kernel="sdpa")
    plan = kernel_plan(baseline, 128, 2, "bf16-mixed", "cuda", cudnn_first=True)
    assert plan.backend == "cudnn" and plan.extra == ()
    assert kernel_plan(baseline, 128, 2, "bf16-mixed", "cuda").backend == "flash"
    assert kernel_plan(baseline, 128, 2, "32-true", "cuda", cudnn_first=True).backend == "memory-efficient"
    wide_plan = kernel_plan(wide, 128, 2, "bf16-mixed", "cuda", cudnn_first=True)
    assert wide_plan.backend == "flash" and "off head sizes over 128" in wide_plan.why
    masked_plan = kernel_plan(masked, 128, 2, "bf16-mixed", "cuda", cudnn_first=True)
    assert masked_plan.backend == "memory-efficient" and "off masked calls" in masked_plan.why


SDPA_VARIANTS = available_variants()  # supported_config skips those SDPA cannot express


@needs_cuda
@pytest.mark.parametrize("variant", SDPA_VARIANTS)
def test_sdpa_trains_every_variant_on_cuda_in_bf16_like_the_explicit_kernel(variant):
    """On an H100 with torch's cuDNN first, a mask that needs a gradient (trainable terms, the
    sink) would reach cuDNN's op, which refuses it; here every SDPA variant trains in bf16 and its
    gradients match the explicit kernel's."""
    sdpa = build_model(supported_config(variant, "sdpa", n_embd=256, block_size=256)).cuda()
    explicit = build_model(supported_config(variant, "explicit", n_embd=256, block_size=256)).cuda()
    explicit.load_state_dict(sdpa.state_dict())
    idx = torch.randint(0, 100, (2, 192), device="cuda")  # not a multiple of 128
    grads = []
    for model in (sdpa, explicit):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(idx).float().square().mean()
        loss.backward()
        grads.append(torch.cat([p.grad.float().flatten() for p in model.parameters()]))
    assert torch.isfinite(grads[0]).all()
    assert ((grads[0] - grads[1]).norm() / grads[1].norm()).item() < 2e-2


@needs_cuda
@pytest.mark.parametrize("variant", ["baseline", "qk_scale", "sliding_window"])
def test_the_sdpa_backend_on_cuda_is_the_plans(variant):
    config = supported_config(variant, "sdpa", n_embd=256, block_size=256)
    model = build_model(config).cuda()
    seen = observed_backends(model, torch.randint(0, 100, (2, 256), device="cuda"), torch.bfloat16)
    plan = kernel_plan(config, 256, 2, "bf16-mixed", "cuda", cudnn_first=cudnn_sdpa.prefers_cudnn("cuda"))
    assert seen == {plan.backend}, plan.why


@needs_cuda
def test_a_masked_call_on_cuda_keeps_finite_query_gradients_where_rows_have_a_tiny_log_sum_exp():
    """The inputs reported to give NaN query gradients from cuDNN's masked backward with torch 2.11:
    T of 64 mod 128 and rows whose log-sum-exp is below about -88.7 (every score here is about
    -120). attnlab sends masked calls to another backend. (Only finiteness is asserted: with keys
    of -960 in one coordinate, bf16's rounding dominates the gradient's value.)"""
    T, D = 192, 64
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k = (torch.randn(1, 1, T, D, device="cuda", generator=gen) * 0.1 for _ in range(2))
    v = torch.randn(1, 1, T, D, device="cuda", generator=gen)
    q[..., 0], k[..., 0] = 1.0, -120 * D ** 0.5
    leaf = q.bfloat16().requires_grad_()
    y, _ = sdpa_attention(leaf, k.bfloat16(), v.bfloat16(), AttentionSpec(window=32), scale=D ** -0.5, q_offset=0)
    y.float().square().sum().backward()
    assert torch.isfinite(leaf.grad).all()

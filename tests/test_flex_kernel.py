"""The FlexAttention kernel (``model.attn_kernel=flex``) computes what the other kernels do.

torch 2.13 has no CPU backward for FlexAttention, so on CPU these tests check its
forward pass (FlexAttention's unfused reference, with the same block mask and
``score_mod`` the GPU kernel compiles) and that training on CPU is refused with a
clear message. Gradients are compared on CUDA only, when a GPU is present.
"""

import warnings

import pytest
import torch

from attnlab.attention import AttentionSpec, ScoreTerms, explicit_attention, flex_attention_kernel
from attnlab.model import build_model
from attnlab.training.run import check_checkpoint_matches
from conftest import supported_config, tiny_config
from variants import available_variants

VARIANTS = available_variants()
HEAD_LAYOUTS = [dict(n_head=1, n_query_groups=1), dict(n_head=4, n_query_groups=2)]


@pytest.fixture(autouse=True)
def _quiet_unfused_flex_warning():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        yield


def _tokens(T=16, seed=1):
    return torch.randint(0, 100, (2, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("layout", HEAD_LAYOUTS, ids=["mha1", "gqa"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_flex_forward_matches_explicit_reference(variant, layout):
    flex = build_model(supported_config(variant, "flex", **layout)).eval()
    explicit = build_model(supported_config(variant, "explicit", **layout)).eval()
    explicit.load_state_dict(flex.state_dict())
    idx = _tokens(T=flex.config.block_size - 3)  # not a multiple of any tile size
    with torch.no_grad():
        torch.testing.assert_close(flex(idx), explicit(idx), rtol=1e-5, atol=1e-5)


@pytest.mark.slow  # implied in the fast tier: flex equals the explicit kernel, whose causality test_variants checks
@pytest.mark.parametrize("variant", VARIANTS)
def test_flex_is_causal(variant):
    model = build_model(supported_config(variant, "flex")).eval()
    idx = _tokens()
    changed = idx.clone()
    changed[:, 8:] = (changed[:, 8:] + 13) % 100
    with torch.no_grad():
        a, b = model(idx), model(changed)
    torch.testing.assert_close(a[:, :8], b[:, :8], rtol=0, atol=1e-6)
    assert not torch.allclose(a[:, 8:], b[:, 8:])


def test_flex_kernel_adds_a_per_batch_term_like_the_explicit_kernel():
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 2, 10, 8, generator=gen) for _ in range(3))
    terms = ScoreTerms(dense=torch.randn(3, 1, 10, 10, generator=gen))
    spec = AttentionSpec(dense_terms=True)
    expected, _ = explicit_attention(q, k, v, spec, terms, scale=0.3, q_offset=0)
    actual, _ = flex_attention_kernel(q, k, v, spec, terms, scale=0.3, q_offset=0)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)


def test_decoding_after_a_kv_cache_builds_no_block_mask_per_token():
    """Generation with the flex kernel: each prompt's prefill runs FlexAttention (one block mask per
    prompt length); the tokens after it take the explicit kernel rather than a new FlexAttention
    shape (on CUDA, a new compile) per token. The greedy tokens are those of the sdpa kernel."""
    from attnlab.attention import _cached_block_mask
    from attnlab.generate import SamplingConfig, generate

    flex = build_model(tiny_config("alibi", attn_kernel="flex")).eval()
    sdpa = build_model(tiny_config("alibi", attn_kernel="sdpa")).eval()
    sdpa.load_state_dict(flex.state_dict())
    _cached_block_mask.cache_clear()
    for prompt in ([1, 2, 3, 4], [5, 6, 7]):
        sampling = SamplingConfig(max_new_tokens=8, greedy=True)
        with torch.no_grad():
            assert generate(flex, prompt, 100, sampling) == generate(sdpa, prompt, 100, sampling)
    assert _cached_block_mask.cache_info().currsize == 2  # one per prompt length, not one per token


def test_training_with_flex_on_cpu_is_refused_with_the_alternative_named():
    model = build_model(tiny_config("qk_scale", attn_kernel="flex"))
    with pytest.raises(RuntimeError, match="attn_kernel='flex' cannot train on CPU.*attn_kernel=auto"):
        model(_tokens())


def test_a_checkpoint_resumes_under_another_kernel(tmp_path):
    """The kernel is how a model is computed, not part of what it is."""
    model = build_model(tiny_config("qk_scale", attn_kernel="sdpa"))
    ckpt = tmp_path / "last.ckpt"
    torch.save({"hyper_parameters": {"model_config": model.config.to_dict()}, "state_dict": {},
                "global_step": 0}, ckpt)
    check_checkpoint_matches(ckpt, tiny_config("qk_scale", attn_kernel="flex"))
    with pytest.raises(ValueError, match="different model"):
        check_checkpoint_matches(ckpt, tiny_config("baseline", attn_kernel="flex"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="FlexAttention's backward needs CUDA")
@pytest.mark.parametrize("variant", VARIANTS)
def test_flex_gradients_match_explicit_on_cuda(variant):
    # Heads of 16 (n_embd 64 over 4 heads): FlexAttention's CUDA kernel takes no head size below 16.
    _assert_flex_gradients_match_explicit_on_cuda(variant, _tokens(), n_embd=64)


def _assert_flex_gradients_match_explicit_on_cuda(variant, idx, **config):
    torch._dynamo.reset()  # past Dynamo's recompile limit, later variants could run FlexAttention eager
    flex = build_model(supported_config(variant, "flex", **config)).cuda()
    explicit = build_model(supported_config(variant, "explicit", **config)).cuda()
    explicit.load_state_dict(flex.state_dict())
    grads = []
    for model in (flex, explicit):
        model(idx.cuda()).square().mean().backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grad, grads[1][name], rtol=1e-3, atol=1e-5, msg=name)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="FlexAttention's backward needs CUDA")
@pytest.mark.parametrize("T", [100, 127])
def test_flex_trains_short_grouped_query_sequences_on_cuda(T):
    """Below 128 queries, with 2 query heads per key head, torch 2.11's flex-decoding kernel has no
    tile for T * 2 > 128: the kernel is forced to FlexAttention's main one there."""
    _assert_flex_gradients_match_explicit_on_cuda("qk_scale", _tokens(T=T), n_embd=64, n_head=4, n_query_groups=2,
                                                  block_size=128)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the compiled FlexAttention wrapper runs on CUDA")
def test_generation_on_cuda_compiles_nothing_per_prompt_length():
    """An eager flex model's prompts are small score matrices: they take the explicit kernel, so
    three prompt lengths compile no FlexAttention shape (each would cost seconds), and the greedy
    tokens are those of the sdpa kernel."""
    from torch._dynamo.utils import counters

    from attnlab.generate import SamplingConfig, generate

    torch._dynamo.reset()
    counters.clear()
    flex = build_model(tiny_config("alibi", attn_kernel="flex")).cuda().eval()
    sdpa = build_model(tiny_config("alibi", attn_kernel="sdpa")).cuda().eval()
    sdpa.load_state_dict(flex.state_dict())
    sampling = SamplingConfig(max_new_tokens=8, greedy=True)
    with torch.no_grad():
        for prompt in ([1, 2, 3, 4], [5, 6, 7], [8, 9]):
            assert generate(flex, prompt, 100, sampling) == generate(sdpa, prompt, 100, sampling)
    assert counters["stats"]["unique_graphs"] == 0

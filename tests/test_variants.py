"""Behaviour every registered attention variant must have (parametrised over the registry)."""

import pytest
import torch

from attnlab.model import build_model
from conftest import tiny_config
from variants import available_variants

VARIANTS = available_variants()
# MHA with one head (the study's shape), GQA and MQA.
HEAD_LAYOUTS = [dict(n_head=1, n_query_groups=1), dict(n_head=4, n_query_groups=2),
                dict(n_head=4, n_query_groups=1)]


def _tokens(batch=2, T=16, vocab=100, seed=1):
    return torch.randint(0, vocab, (batch, T), generator=torch.Generator().manual_seed(seed))


def test_the_four_seed_variants_are_registered():
    assert {"baseline", "gelu_bias", "sep_qkv", "qk_scale"} <= set(VARIANTS)


@pytest.mark.parametrize("layout", HEAD_LAYOUTS, ids=["mha1", "gqa", "mqa"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_future_tokens_never_change_earlier_outputs(variant, layout):
    model = build_model(tiny_config(variant, **layout)).eval()
    idx = _tokens()
    t = 7
    changed = idx.clone()
    changed[:, t + 1:] = (changed[:, t + 1:] + 13) % 100
    with torch.no_grad():
        a, b = model(idx), model(changed)
    torch.testing.assert_close(a[:, :t + 1], b[:, :t + 1], rtol=0, atol=1e-6)
    assert not torch.allclose(a[:, t + 1:], b[:, t + 1:])


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_parameter_receives_a_gradient(variant):
    model = build_model(tiny_config(variant))
    idx = _tokens(T=model.config.block_size)
    loss = torch.nn.functional.cross_entropy(model(idx).flatten(0, 1), idx.flatten())
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


@pytest.mark.parametrize("layout", HEAD_LAYOUTS, ids=["mha1", "gqa", "mqa"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_fused_kernel_matches_explicit_reference_outputs_and_gradients(variant, layout):
    fused = build_model(tiny_config(variant, attn_kernel="sdpa", **layout))
    explicit = build_model(tiny_config(variant, attn_kernel="explicit", **layout))
    explicit.load_state_dict(fused.state_dict())
    idx = _tokens()
    outs = []
    for model in (fused, explicit):
        logits = model(idx)
        logits.square().mean().backward()
        outs.append((logits, {n: p.grad for n, p in model.named_parameters()}))
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=1e-5, atol=1e-5)
    for name, grad in outs[0][1].items():
        torch.testing.assert_close(grad, outs[1][1][name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("layout", HEAD_LAYOUTS, ids=["mha1", "gqa", "mqa"])
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("kernel", ["sdpa", "flex", "explicit"])
def test_kv_cache_decoding_matches_full_forward(variant, layout, kernel):
    model = build_model(tiny_config(variant, attn_kernel=kernel, **layout)).eval()
    idx = _tokens(T=12)
    with torch.no_grad():
        full = model(idx)
        caches = model.new_kv_caches(batch_size=2)
        steps = [model(idx[:, :5], caches)]  # a prompt of several tokens, then one at a time
        steps += [model(idx[:, t:t + 1], caches) for t in range(5, 12)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
def test_attention_probs_are_causal_distributions(variant):
    model = build_model(tiny_config(variant)).eval()
    probs = model.attention_probs(_tokens(T=10))
    assert len(probs) == model.config.n_layer
    for p in probs:
        assert p.shape == (2, model.config.n_head, 10, 10)
        torch.testing.assert_close(p.sum(-1), torch.ones(2, model.config.n_head, 10))
        assert (p.triu(diagonal=1) == 0).all()
        assert (p >= 0).all()


@pytest.mark.parametrize("variant", VARIANTS)
def test_shared_weights_are_initialised_identically_to_baseline(variant):
    base = dict(build_model(tiny_config("baseline"), seed=3).named_parameters())
    other = dict(build_model(tiny_config(variant), seed=3).named_parameters())
    shared = [n for n in base if n in other and ".attn." not in n and other[n].shape == base[n].shape]
    assert any(n.startswith("wte") for n in shared) and any(".mlp." in n for n in shared)
    for name in shared:
        if name.endswith(".bias"):
            continue
        assert torch.equal(base[name], other[name]), name


def test_different_seeds_give_different_weights():
    a = build_model(tiny_config(), seed=0).wte.weight
    b = build_model(tiny_config(), seed=1).wte.weight
    assert not torch.equal(a, b)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("kernel", ["sdpa", "flex", "explicit"])
def test_chunked_prefill_after_a_cache_matches_full_forward(variant, kernel):
    """Several new tokens after cached ones: the causal mask is offset by the cache length."""
    model = build_model(tiny_config(variant, attn_kernel=kernel)).eval()
    idx = _tokens(T=12)
    with torch.no_grad():
        full = model(idx)
        caches = model.new_kv_caches(batch_size=2)
        chunks = [model(idx[:, :4], caches), model(idx[:, 4:9], caches), model(idx[:, 9:], caches)]
    torch.testing.assert_close(torch.cat(chunks, dim=1), full, rtol=1e-5, atol=1e-5)

"""Behaviour every registered attention variant must have (parametrised over the registry).

A variant that declares it cannot use a model shape (``unsupported``) or a kernel
(``attention_spec`` / ``kernels``) is skipped for that case with its own reason;
``tests/test_registry_and_config.py`` checks that the refusal itself is clear.
"""

import pytest
import torch

from attnlab.model import build_model
from conftest import supported_config, tiny_config
from variants import available_variants, get_variant

VARIANTS = available_variants()
# MHA with one head (the study's shape), GQA and MQA.
HEAD_LAYOUTS = [dict(n_head=1, n_query_groups=1), dict(n_head=4, n_query_groups=2),
                dict(n_head=4, n_query_groups=1)]
LAYOUT_IDS = ["mha1", "gqa", "mqa"]
KERNELS = ["sdpa", "flex", "explicit"]  # auto picks sdpa or explicit on CPU


def _tokens(batch=2, T=16, vocab=100, seed=1):
    return torch.randint(0, vocab, (batch, T), generator=torch.Generator().manual_seed(seed))


def test_the_four_seed_variants_are_registered():
    assert {"baseline", "gelu_bias", "sep_qkv", "qk_scale"} <= set(VARIANTS)


@pytest.mark.parametrize("layout", HEAD_LAYOUTS, ids=LAYOUT_IDS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_future_tokens_never_change_earlier_outputs(variant, layout):
    model = build_model(supported_config(variant, **layout)).eval()
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
    model = build_model(supported_config(variant))
    idx = _tokens(T=model.config.block_size)
    loss = torch.nn.functional.cross_entropy(model(idx).flatten(0, 1), idx.flatten())
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


@pytest.mark.parametrize("kernel", ["auto", "sdpa"])  # the kernels that train on CPU
@pytest.mark.parametrize("layout", HEAD_LAYOUTS, ids=LAYOUT_IDS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_fused_kernel_matches_explicit_reference_outputs_and_gradients(variant, layout, kernel):
    fused = build_model(supported_config(variant, kernel, **layout))
    explicit = build_model(supported_config(variant, "explicit", **layout))
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


@pytest.mark.parametrize("layout", HEAD_LAYOUTS, ids=LAYOUT_IDS)
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("kernel", KERNELS)
def test_kv_cache_decoding_matches_full_forward(variant, layout, kernel):
    model = build_model(supported_config(variant, kernel, **layout)).eval()
    idx = _tokens(T=12)
    with torch.no_grad():
        full = model(idx)
        caches = model.new_kv_caches(batch_size=2)
        steps = [model(idx[:, :5], caches)]  # a prompt of several tokens, then one at a time
        steps += [model(idx[:, t:t + 1], caches) for t in range(5, 12)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
def test_attention_weights_are_causal_and_distributions_where_declared(variant):
    model = build_model(supported_config(variant)).eval()
    weights = model.attention_probs(_tokens(T=10))
    assert len(weights) == model.config.n_layer
    for w in weights:
        assert w.shape[0] == 2 and w.shape[2:] == (10, 10)
        assert model.config.n_head % w.shape[1] == 0
        assert (w.triu(diagonal=1) == 0).all()
        if get_variant(variant).weights_are_distributions:
            torch.testing.assert_close(w.sum(-1), torch.ones(w.shape[:3]))
            assert (w >= 0).all()


@pytest.mark.parametrize("variant", VARIANTS)
def test_analysis_weights_are_what_the_training_forward_computes(variant):
    """Same output with and without weights: the weights come from the same description."""
    model = build_model(supported_config(variant)).eval()
    idx = _tokens(T=10)
    with torch.no_grad():
        logits = model(idx)
        logits_with_weights = model._forward(idx, None, need_weights=True)[0]
    torch.testing.assert_close(logits_with_weights, logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
def test_shared_weights_are_initialised_identically_to_baseline(variant):
    base = dict(build_model(tiny_config("baseline"), seed=3).named_parameters())
    other = dict(build_model(supported_config(variant), seed=3).named_parameters())
    shared = [n for n in base if n in other and ".attn." not in n and other[n].shape == base[n].shape]
    assert any(n.startswith("wte") for n in shared) and any(".mlp." in n for n in shared)
    for name in shared:
        if name.endswith(".bias"):
            continue
        assert torch.equal(base[name], other[name]), name


@pytest.mark.parametrize("variant", VARIANTS)
def test_initialisation_is_a_function_of_the_seed(variant):
    a = build_model(supported_config(variant), seed=5).state_dict()
    b = build_model(supported_config(variant), seed=5).state_dict()
    assert all(torch.equal(a[name], b[name]) for name in a)


def test_different_seeds_give_different_weights():
    a = build_model(tiny_config(), seed=0).wte.weight
    b = build_model(tiny_config(), seed=1).wte.weight
    assert not torch.equal(a, b)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("kernel", KERNELS)
def test_chunked_prefill_after_a_cache_matches_full_forward(variant, kernel):
    """Several new tokens after cached ones: the causal mask is offset by the cache length."""
    model = build_model(supported_config(variant, kernel)).eval()
    idx = _tokens(T=12)
    with torch.no_grad():
        full = model(idx)
        caches = model.new_kv_caches(batch_size=2)
        chunks = [model(idx[:, :4], caches), model(idx[:, 4:9], caches), model(idx[:, 9:], caches)]
    torch.testing.assert_close(torch.cat(chunks, dim=1), full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_documents_itself(variant):
    """The listing and the docs read these declarations: a summary line, a paper, a docstring."""
    block = get_variant(variant)
    module = __import__(block.__module__, fromlist=["_"])
    assert block.__doc__ and block.__doc__.strip().splitlines()[0], "one-line summary"
    assert block.paper, "where the variant comes from"
    assert module.__doc__ and f"``{variant}``" in module.__doc__

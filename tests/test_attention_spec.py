"""Every kernel computes what an ``AttentionSpec`` describes, and refuses what it cannot.

The explicit kernel is checked against a per-query loop written from the module
docstring's formula; SDPA (outputs and gradients) and FlexAttention (forward: it has no
CPU backward) are checked against the explicit kernel for every feature of the spec,
including those no registered variant uses yet.
"""

import math
import warnings

import pytest
import torch

from attnlab.attention import (KERNELS, AttentionSpec, ScoreTerms, attend, check_kernel, choose_kernel,
                               explicit_attention, flex_head_size_problem, kernels_for)

B, H, G, T, HS = 2, 4, 2, 9, 8
SPECS = {
    "causal": AttentionSpec(),
    "window3": AttentionSpec(window=3),
    "softcap": AttentionSpec(softcap=2.0),
    "dense": AttentionSpec(dense_terms=True),
    "separable": AttentionSpec(separable_terms=True),
    "sink": AttentionSpec(normaliser="softmax_sink"),
    "sink_window_dense": AttentionSpec(normaliser="softmax_sink", window=4, dense_terms=True),
    "sigmoid": AttentionSpec(normaliser="sigmoid", sigmoid_bias=-math.log(T)),
    "sigmoid_window_cap": AttentionSpec(normaliser="sigmoid", window=2, softcap=1.5, separable_terms=True),
}


@pytest.fixture(autouse=True)
def _quiet_unfused_flex_warning():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        yield


def _inputs(spec: AttentionSpec, S: int = T, n_query: int = T, seed: int = 0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=dtype)

    q, k, v = randn(B, H, n_query, HS), randn(B, G, S, HS), randn(B, G, S, HS)
    terms = ScoreTerms(
        dense=randn(B, 1, n_query, S) if spec.dense_terms else None,
        query=randn(1, H, n_query) if spec.separable_terms else None,
        key=randn(B, H, S) if spec.separable_terms else None,
        sink=randn(H) if spec.normaliser == "softmax_sink" else None)
    return q, k, v, terms


def _by_the_formula(q, k, v, spec, terms, scale, q_offset):
    """y_i = sum over allowed j of w_ij v_j, one query and one head at a time."""
    n_query, S = q.shape[2], k.shape[2]
    y = torch.zeros(B, H, n_query, v.shape[-1], dtype=q.dtype)
    for b in range(B):
        for h in range(H):
            g = h // (H // G)
            for i in range(n_query):
                p = q_offset + i
                keys = [j for j in range(S) if j <= p and (spec.window is None or j > p - spec.window)]
                s = torch.stack([scale * q[b, h, i] @ k[b, g, j] for j in keys])
                if spec.softcap is not None:
                    s = spec.softcap * torch.tanh(s / spec.softcap)
                for n, j in enumerate(keys):
                    if terms.dense is not None:
                        s[n] = s[n] + terms.dense[b, 0, i, j]
                    if terms.query is not None:
                        s[n] = s[n] + terms.query[0, h, i] + terms.key[b, h, j]
                if spec.normaliser == "sigmoid":
                    w = torch.sigmoid(s + spec.sigmoid_bias)
                elif spec.normaliser == "softmax_sink":
                    w = torch.exp(s) / (torch.exp(s).sum() + torch.exp(terms.sink[h]))
                else:
                    w = torch.softmax(s, dim=0)
                y[b, h, i] = sum(w[n] * v[b, g, j] for n, j in enumerate(keys))
    return y


@pytest.mark.parametrize("name", SPECS)
def test_explicit_kernel_is_the_formula(name):
    spec = SPECS[name]
    q, k, v, terms = _inputs(spec)
    expected = _by_the_formula(q, k, v, spec, terms, 0.3, 0)
    actual, _ = explicit_attention(q, k, v, spec, terms, scale=0.3, q_offset=0)
    torch.testing.assert_close(actual, expected)
    # A chunk of queries after cached keys: the mask and the window follow absolute positions.
    q2, k2, v2, terms2 = _inputs(spec, S=T, n_query=3, seed=1)
    expected = _by_the_formula(q2, k2, v2, spec, terms2, 0.3, T - 3)
    actual, _ = explicit_attention(q2, k2, v2, spec, terms2, scale=0.3, q_offset=T - 3)
    torch.testing.assert_close(actual, expected)


@pytest.mark.parametrize("kernel", ["sdpa", "flex"])
@pytest.mark.parametrize("name", SPECS)
def test_fused_kernels_match_explicit_where_they_can_express_the_spec(name, kernel):
    spec = SPECS[name]
    if kernel not in kernels_for(spec):
        with pytest.raises(ValueError, match="cannot run variant 'v'.*kernels that can: auto, "):
            check_kernel(kernel, spec, "v")
        return
    for S, n_query, q_offset in [(T, T, 0), (T, 3, T - 3), (T, 1, T - 1)]:
        q, k, v, terms = _inputs(spec, S=S, n_query=n_query, dtype=torch.float32)
        expected, _ = explicit_attention(q, k, v, spec, terms, scale=0.3, q_offset=q_offset)
        with torch.no_grad():
            actual, _ = KERNELS[kernel].run(q, k, v, spec, terms, scale=0.3, q_offset=q_offset)
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", [n for n, s in SPECS.items() if "sdpa" in kernels_for(s)])
def test_sdpa_gradients_match_explicit(name):
    spec = SPECS[name]
    grads = []
    for kernel in ("sdpa", "explicit"):
        q, k, v, terms = _inputs(spec, dtype=torch.float32)
        tensors = [t for t in (q, k, v, *terms) if t is not None]
        for t in tensors:
            t.requires_grad_(True)
        y, _ = KERNELS[kernel].run(q, k, v, spec, terms, scale=0.3, q_offset=0)
        grads.append(torch.autograd.grad(y.square().sum(), tensors))
    for fused, reference in zip(*grads):
        torch.testing.assert_close(fused, reference, rtol=1e-4, atol=1e-5)


def test_weights_of_each_normaliser():
    spec = SPECS["sink"]
    q, k, v, terms = _inputs(spec)
    _, weights = explicit_attention(q, k, v, spec, terms, scale=0.3, q_offset=0, need_weights=True)
    assert (weights.sum(-1) < 1).all()  # the sink takes the rest of the mass
    spec = SPECS["window3"]
    _, weights = explicit_attention(q, k, v, spec, ScoreTerms(), scale=0.3, q_offset=0, need_weights=True)
    torch.testing.assert_close(weights.sum(-1), torch.ones(B, H, T, dtype=weights.dtype))
    assert (weights.tril(diagonal=-3) == 0).all() and (weights.triu(diagonal=1) == 0).all()


def test_auto_passes_over_flex_at_head_sizes_its_cuda_kernel_cannot_compile():
    """The study's head size 620 (staged as 1024) and diff_attn's value pairs of 2 x 160 are above
    FlexAttention's 256; 8 is below Inductor's 16. SDPA takes the terms in a float mask instead."""
    for sizes in ((620, 620), (160, 320), (8, 8)):
        assert flex_head_size_problem(sizes) is not None
        assert choose_kernel(SPECS["dense"], "cuda", sizes) == "sdpa"
        assert choose_kernel(SPECS["window3"], "cuda", sizes) == "sdpa"
        assert choose_kernel(SPECS["softcap"], "cuda", sizes) == "explicit"  # SDPA cannot cap
    assert "staged as 1024" in flex_head_size_problem((620, 620))
    assert "from 16" in flex_head_size_problem((8, 8))
    for sizes in ((16, 16), (256, 256), (128, 256)):
        assert flex_head_size_problem(sizes) is None
        assert choose_kernel(SPECS["dense"], "cuda", sizes) == "flex"


def test_attend_asks_for_the_kernel_with_the_calls_own_head_sizes(monkeypatch):
    """diff_attn's maps attend over value pairs: the call's v head size (2 x hs), not the key's,
    is what FlexAttention's limit is checked against."""
    from attnlab import attention
    from attnlab.model import build_model
    from conftest import tiny_config

    asked = []
    choose = attention.choose_kernel
    monkeypatch.setattr(attention, "choose_kernel", lambda spec, device, sizes: asked.append(sizes) or
                        choose(spec, device, sizes))
    for variant, sizes in (("baseline", (8, 8)), ("diff_attn", (8, 16))):
        asked.clear()
        build_model(tiny_config(variant))(torch.randint(0, 100, (1, 8)))
        assert set(asked) == {sizes}, variant


def test_auto_picks_the_fastest_kernel_that_can_express_the_spec():
    hs = (64, 64)
    assert choose_kernel(SPECS["causal"], "cpu", hs) == "sdpa"
    assert choose_kernel(SPECS["dense"], "cpu", hs) == "sdpa"
    assert choose_kernel(SPECS["softcap"], "cpu", hs) == "explicit"  # SDPA cannot cap; flex cannot train
    assert choose_kernel(SPECS["sigmoid"], "cpu", hs) == "explicit"
    assert choose_kernel(SPECS["causal"], "cuda", hs) == "sdpa"  # the flash kernel
    assert choose_kernel(SPECS["softcap"], "cuda", hs) == "flex"
    assert choose_kernel(SPECS["window3"], "cuda", hs) == "flex"
    assert choose_kernel(SPECS["dense"], "cuda", hs) == "flex"
    assert choose_kernel(SPECS["sigmoid"], "cuda", hs) == "explicit"
    q, k, v, terms = _inputs(SPECS["softcap"], dtype=torch.float32)
    auto, _ = attend(q, k, v, SPECS["softcap"], terms, kernel="auto", scale=0.3, q_offset=0)
    explicit, _ = attend(q, k, v, SPECS["softcap"], terms, kernel="explicit", scale=0.3, q_offset=0)
    torch.testing.assert_close(auto, explicit)


def test_a_forced_kernel_that_cannot_express_the_spec_is_refused_with_the_alternatives():
    with pytest.raises(ValueError, match="model.attn_kernel='sdpa' cannot run variant 'capped': SDPA cannot "
                                         "apply tanh soft-capping.*kernels that can: auto, flex, explicit"):
        check_kernel("sdpa", SPECS["softcap"], "capped")
    with pytest.raises(ValueError, match="unknown attention kernel 'fast'; available: auto, "):
        check_kernel("fast", SPECS["causal"], "baseline")
    check_kernel("auto", SPECS["sigmoid"], "sigmoid_attn")  # auto can always run it


@pytest.mark.parametrize("bad, message", [
    (dict(normaliser="relu"), "unknown attention normaliser 'relu'; allowed: softmax, softmax_sink, sigmoid"),
    (dict(softcap=0.0), "softcap must be positive"),
    (dict(window=0), "window must be a positive integer"),
])
def test_bad_specs_are_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        AttentionSpec(**bad)

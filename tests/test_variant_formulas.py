"""Each new attention variant against a plain transcription of its paper's formula.

The references below are written from the papers' equations with plain torch ops (matmul,
softmax, sigmoid, loops over heads) and read only the block's parameters: they call no
helper of the variant and no kernel of ``attnlab.attention``; RoPE, RMSNorm and the causal
mask are written out here too. Every block parameter is redrawn at random first (norm
gains away from 1, mixing matrices away from the identity, biases non-zero where the
model has them), so that a parameter the block ignored, or used in the wrong place,
would show. Outputs are of order one.

Blocks and references run in float64 and agree to TOL_FP64 (every step of the blocks,
RMSNorm included, keeps float64). A formula error shows as 1e-3 or more.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import Tensor

from attnlab.config import ModelConfig
from attnlab.model import build_model
from variants.diff_attn import lambda_init as diff_lambda_init

TOL_FP64 = dict(rtol=0.0, atol=1e-10)
T = 11  # tokens per sequence (< block_size = 32)


@pytest.fixture(autouse=True)
def _quiet_unfused_flex_warning():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        yield


def config(variant: str, **overrides) -> ModelConfig:
    settings = dict(vocab_size=100, block_size=32, n_layer=2, n_head=4, n_query_groups=2,
                    n_embd=32, intermediate_size=64)
    settings.update(overrides)
    return ModelConfig(variant=variant, **settings)


# ---------------------------------------------------------------- the transcriptions' pieces

def rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """LLaMA's rotate-half RoPE on the first cos.shape[-1] channels of x (..., T, hs)."""
    n = cos.shape[-1]
    rotated, rest = x[..., :n], x[..., n:]
    return torch.cat([rotated * cos + rotate_half(rotated) * sin, rest], dim=-1)


def rms_norm(x: Tensor, gain: Tensor, eps: float) -> Tensor:
    return x / torch.sqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps) * gain


def causal(T: int) -> Tensor:
    """(T, T) boolean, True where query i may see key j (j <= i)."""
    return torch.ones(T, T, dtype=torch.bool).tril()


def masked_softmax(logits: Tensor) -> Tensor:
    return logits.masked_fill(~causal(logits.shape[-1]), float("-inf")).softmax(dim=-1)


def linear(x: Tensor, layer: torch.nn.Linear) -> Tensor:
    y = x @ layer.weight.T
    return y if layer.bias is None else y + layer.bias


def heads(blk, x: Tensor) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
    """The fused projection read as [q heads 0..H-1 | k heads 0..G-1 | v heads 0..G-1],
    hs channels each: lists of (B, T, hs) tensors, before any normalisation or RoPE."""
    H, G, hs = blk.n_head, blk.n_query_groups, blk.head_size
    out = linear(x, blk.qkv)
    assert out.shape[-1] == (H + 2 * G) * hs
    chunk = [out[..., i * hs:(i + 1) * hs] for i in range(H + 2 * G)]
    return chunk[:H], chunk[H:H + G], chunk[H + G:]


def group_of(h: int, H: int, G: int) -> int:
    return h // (H // G)


def baseline_reference(blk, x, cos, sin, transform=None, gate=None):
    """softmax(RoPE(q) RoPE(k)^T / sqrt(hs) + causal) v per head, then proj. ``transform``
    maps (q_h, k_g) before RoPE; ``gate`` maps the concatenated heads before proj."""
    H, G = blk.n_head, blk.n_query_groups
    qs, ks, vs = heads(blk, x)
    scale = 1.0 / math.sqrt(blk.head_size)
    ys, probs = [], []
    for h in range(H):
        g = group_of(h, H, G)
        q, k = qs[h], ks[g]
        if transform is not None:
            q, k = transform(q, k)
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        p = masked_softmax(q @ k.transpose(-2, -1) * scale)
        probs.append(p)
        ys.append(p @ vs[g])
    y = torch.cat(ys, dim=-1)
    if gate is not None:
        y = gate(y)
    return linear(y, blk.proj), torch.stack(probs, dim=1)


# ---------------------------------------------------------------- shared machinery

@torch.no_grad()
def randomise(blk, seed: int = 0) -> None:
    """Redraw every parameter of the block so that outputs are of order one and no gain,
    bias or mixing matrix has its neutral value."""
    g = torch.Generator().manual_seed(seed)
    for name, p in blk.named_parameters():
        r = torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype)
        if "norm" in name:
            p.copy_(1.0 + 0.5 * r)
        elif name.endswith("bias"):
            p.copy_(0.5 * r)
        elif name.startswith("lambda_"):
            p.copy_(0.3 * r)
        elif name in ("logits_mix", "weights_mix"):
            p.copy_(r / math.sqrt(p.shape[0]))
        elif p.ndim == 1:  # a vector of a variant's own (one value per head, say)
            p.copy_(0.5 * r)
        else:  # Linear weights (out, in)
            p.copy_(r / math.sqrt(p.shape[1]))


def block_input(model, seed: int = 1, batch: int = 2):
    """An RMS-normed block input (B, T, C) and the RoPE tables for positions 0..T-1."""
    dtype = model.wte.weight.dtype
    x = torch.randn(batch, T, model.config.n_embd, generator=torch.Generator().manual_seed(seed),
                    dtype=torch.float64).to(dtype)
    x = x / x.pow(2).mean(-1, keepdim=True).sqrt()
    return x, model.rope_cos[:T].to(dtype), model.rope_sin[:T].to(dtype)


def run(blk, x, cos, sin, need_weights=False):
    with torch.no_grad():  # flex on CPU runs forward only
        return blk(x, cos, sin, need_weights=need_weights)


def build(variant: str, layer: int = 0, seed: int = 0, **overrides):
    """A float64 model and its layer ``layer``'s attention block, parameters redrawn."""
    model = build_model(config(variant, **overrides), seed=seed).double()
    blk = model.blocks[layer].attn
    randomise(blk, seed=100 + layer)
    return model, blk


def close(actual: Tensor, expected: Tensor, tol: dict) -> None:
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    torch.testing.assert_close(actual.double(), expected.double(), **tol)


ALL_KERNELS = ["auto", "sdpa", "flex", "explicit"]  # CPU, forward: flex runs unfused


def check(blk, x, cos, sin, expected: Tensor, weights: Tensor, tol: dict = TOL_FP64,
          weights_tol: dict | None = None) -> None:
    """The block's output against ``expected`` on its kernel; then with ``need_weights``
    (the explicit kernel) its analysis weights against ``weights`` and the output again."""
    assert x.dtype == expected.dtype == weights.dtype == torch.float64
    close(run(blk, x, cos, sin).output, expected, tol)
    out = run(blk, x, cos, sin, need_weights=True)
    close(out.output, expected, tol)
    close(out.weights, weights, weights_tol or tol)


# ---------------------------------------------------------------- baseline (the pieces themselves)

@pytest.mark.parametrize("kernel", ALL_KERNELS)
@pytest.mark.parametrize("shape", [dict(n_query_groups=2), dict(n_query_groups=1, rotary_percentage=0.5)],
                         ids=["gqa", "mqa-partial-rope"])
def test_transcription_pieces_reproduce_the_baseline(kernel, shape):
    """RoPE, the causal mask and the head layout written here are the baseline's."""
    model, blk = build("baseline", attn_kernel=kernel, **shape)
    x, cos, sin = block_input(model)
    with torch.no_grad():
        expected, probs = baseline_reference(blk, x, cos, sin)
    check(blk, x, cos, sin, expected, probs)


# ---------------------------------------------------------------- qk_norm

QK_NORM_SHAPES = [dict(n_query_groups=2), dict(n_query_groups=4, norm_eps=0.05),
                  dict(n_query_groups=1, rotary_percentage=0.5)]


@pytest.mark.parametrize("kernel", ALL_KERNELS)
@pytest.mark.parametrize("shape", QK_NORM_SHAPES, ids=["gqa", "mha-large-eps", "mqa-partial-rope"])
def test_qk_norm_is_rmsnorm_per_head_before_rope(kernel, shape):
    """q_h <- RoPE(RMSNorm(q_h) * g_q), k_g <- RoPE(RMSNorm(k_g) * g_k) over hs channels;
    then the baseline's softmax attention. Weights: the softmax probabilities."""
    model, blk = build("qk_norm", attn_kernel=kernel, **shape)
    eps = model.config.norm_eps
    x, cos, sin = block_input(model)

    def norm_qk(q, k):
        return rms_norm(q, blk.q_norm.weight, eps), rms_norm(k, blk.k_norm.weight, eps)

    assert blk.q_norm.weight.shape == blk.k_norm.weight.shape == (model.config.head_size,)
    with torch.no_grad():
        expected, probs = baseline_reference(blk, x, cos, sin, transform=norm_qk)
    check(blk, x, cos, sin, expected, probs, TOL_FP64)


# ---------------------------------------------------------------- gated_attn

@pytest.mark.parametrize("kernel", ALL_KERNELS)
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("granularity", ["elementwise", "headwise"])
def test_gated_attn_is_sigmoid_gate_of_the_input_before_the_projection(granularity, bias, kernel):
    """Qiu et al. 2025 (G1): Y' = Y * sigmoid(X W_g + b_g), X the block input, before proj;
    elementwise: one gate per channel of H * hs; headwise: one per head, over its hs channels."""
    model, blk = build("gated_attn", attn_kernel=kernel, bias=bias,
                       variant_options={"granularity": granularity})
    H, hs, C = blk.n_head, blk.head_size, model.config.n_embd
    x, cos, sin = block_input(model)
    width = H if granularity == "headwise" else H * hs
    assert blk.gate.weight.shape == (width, C)
    assert (blk.gate.bias is not None) == bias

    def gate(y):  # y: (B, T, H * hs), the heads side by side
        s = torch.sigmoid(linear(x, blk.gate))
        if granularity == "elementwise":
            return y * s
        return torch.cat([y[..., h * hs:(h + 1) * hs] * s[..., h:h + 1] for h in range(H)], dim=-1)

    with torch.no_grad():
        expected, probs = baseline_reference(blk, x, cos, sin, gate=gate)
    check(blk, x, cos, sin, expected, probs)


# ---------------------------------------------------------------- sigmoid_attn

def sigmoid_reference(blk, x, cos, sin, n: int):
    """w_ij = sigmoid(q_i . k_j / sqrt(hs) - log n) for j <= i, else 0; y_i = sum_j w_ij v_j."""
    H, G = blk.n_head, blk.n_query_groups
    qs, ks, vs = heads(blk, x)
    b = -math.log(n)
    ys, ws = [], []
    for h in range(H):
        g = group_of(h, H, G)
        q, k = rope(qs[h], cos, sin), rope(ks[g], cos, sin)
        w = torch.sigmoid(q @ k.transpose(-2, -1) / math.sqrt(blk.head_size) + b) * causal(x.shape[1])
        ws.append(w)
        ys.append(w @ vs[g])
    return linear(torch.cat(ys, dim=-1), blk.proj), torch.stack(ws, dim=1)


@pytest.mark.parametrize("kernel", ["auto", "explicit"])
@pytest.mark.parametrize("n_option", ["block_size", 16])
def test_sigmoid_attn_is_unnormalised_sigmoid_with_bias_minus_log_n(n_option, kernel):
    """Ramapuram et al. 2024: b = -log n, n = the option's number or the block_size; causal; rows
    do not sum to one. Weights: the sigmoid weights. Without QK-norm (the conventions of
    reference/zoo; the default's, QK-norm and n = seq_len: tests/test_variant_conventions.py)."""
    model, blk = build("sigmoid_attn", attn_kernel=kernel, variant_options={"n": n_option, "qk_norm": False})
    x, cos, sin = block_input(model)
    n = model.config.block_size if n_option == "block_size" else n_option
    with torch.no_grad():
        expected, weights = sigmoid_reference(blk, x, cos, sin, n)
        other_n, _ = sigmoid_reference(blk, x, cos, sin, 16 if n == 32 else 32)
    check(blk, x, cos, sin, expected, weights)
    assert (expected - other_n).abs().max() > 1e-2  # so n (hence the option) is seen
    row_sums = run(blk, x, cos, sin, need_weights=True).weights.sum(-1)
    assert (row_sums - 1).abs().max() > 0.1


@pytest.mark.parametrize("kernel", ["sdpa", "flex"])
def test_sigmoid_attn_refuses_softmax_only_kernels(kernel):
    with pytest.raises(ValueError, match="sigmoid"):
        build_model(config("sigmoid_attn", attn_kernel=kernel))


# ---------------------------------------------------------------- diff_attn

def diff_reference(blk, x, cos, sin, layer: int, eps: float, key_heads=None):
    """Ye et al. 2024, with differential head i = baseline q heads (2i, 2i + 1), its key group
    j's key heads (2j, 2j + 1) and value heads (2j, 2j + 1) concatenated; ``key_heads(i)``,
    when given, names the two key heads of head i instead."""
    H, G, hs = blk.n_head, blk.n_query_groups, blk.head_size
    qs, ks, vs = heads(blk, x)
    qs = [rope(q, cos, sin) for q in qs]
    ks = [rope(k, cos, sin) for k in ks]
    scale = 1.0 / math.sqrt(hs)
    depth = layer + 1  # the paper's l = 1, 2, ...
    lambda_init = 0.8 - 0.6 * math.exp(-0.3 * (depth - 1))
    lam = (torch.exp(torch.dot(blk.lambda_q1, blk.lambda_k1))
           - torch.exp(torch.dot(blk.lambda_q2, blk.lambda_k2)) + lambda_init)
    n_diff, n_groups = H // 2, G // 2
    outs, maps = [], []
    for i in range(n_diff):
        j = i // (n_diff // n_groups)
        a1, a2 = (2 * j, 2 * j + 1) if key_heads is None else key_heads(i)
        q1, q2, k1, k2 = qs[2 * i], qs[2 * i + 1], ks[a1], ks[a2]
        v = torch.cat([vs[2 * j], vs[2 * j + 1]], dim=-1)  # (B, T, 2 hs)
        a = (masked_softmax(q1 @ k1.transpose(-2, -1) * scale)
             - lam * masked_softmax(q2 @ k2.transpose(-2, -1) * scale))
        maps.append(a)
        outs.append((1 - lambda_init) * rms_norm(a @ v, blk.sub_norm.weight, eps))
    return linear(torch.cat(outs, dim=-1), blk.proj), torch.stack(maps, dim=1)


DIFF_SHAPES = [dict(n_head=4, n_query_groups=2), dict(n_head=4, n_query_groups=4, norm_eps=0.05),
               dict(n_head=8, n_query_groups=4, rotary_percentage=0.5)]


@pytest.mark.parametrize("kernel", ALL_KERNELS)
@pytest.mark.parametrize("layer", [0, 1, 2])
@pytest.mark.parametrize("shape", DIFF_SHAPES, ids=["h4g2", "h4g4-large-eps", "h8g4-partial-rope"])
def test_diff_attn_is_the_differential_transformer_formula(shape, layer, kernel):
    """A_i = softmax(q1 k1^T / sqrt(hs)) - lambda softmax(q2 k2^T / sqrt(hs)),
    lambda = exp(lq1.lk1) - exp(lq2.lk2) + lambda_init, lambda_init = 0.8 - 0.6 exp(-0.3 (l - 1)),
    head_i = (1 - lambda_init) RMSNorm(A_i v); weights: A_i, (B, H / 2, T, T). Each map with its
    own key head and the model's norm_eps (the conventions of reference/zoo; the default's:
    tests/test_variant_conventions.py)."""
    model, blk = build("diff_attn", layer=layer, attn_kernel=kernel, n_layer=3,
                       variant_options={"kv_pairing": "separate", "sub_norm_eps": None}, **shape)
    x, cos, sin = block_input(model)
    assert blk.sub_norm.weight.shape == (2 * blk.head_size,)
    with torch.no_grad():
        expected, maps = diff_reference(blk, x, cos, sin, layer, model.config.norm_eps)
    assert maps.shape == (x.shape[0], blk.n_head // 2, T, T)
    check(blk, x, cos, sin, expected, maps, TOL_FP64, weights_tol=TOL_FP64)


def test_diff_attn_lambda_init_follows_the_layer_depth():
    """lambda_init = 0.8 - 0.6 exp(-0.3 (l - 1)) at l = 1, 2, 3 (layer index 0, 1, 2), seen on its
    own: with the learned vectors zero, lambda = exp(0) - exp(0) + lambda_init, and a row of
    A = softmax - lambda * softmax sums to 1 - lambda."""
    for layer, lambda_init in [(0, 0.2), (1, 0.8 - 0.6 * math.exp(-0.3)), (2, 0.8 - 0.6 * math.exp(-0.6))]:
        model, blk = build("diff_attn", layer=layer, n_layer=3)
        with torch.no_grad():
            for name in ("lambda_q1", "lambda_k1", "lambda_q2", "lambda_k2"):
                getattr(blk, name).zero_()
        x, cos, sin = block_input(model)
        w = run(blk, x, cos, sin, need_weights=True).weights
        close(w.sum(-1), torch.full(w.shape[:-1], 1 - lambda_init, dtype=torch.float64), TOL_FP64)


def test_diff_attn_depth_constants_round_as_python_floats_do():
    """The depth lives in a buffer (compiled blocks share one graph); its float32 constants are
    the Python float's value rounded once, so float32 runs are those of a Python-float lambda_init."""
    model = build_model(config("diff_attn", n_layer=12))
    for depth, block in enumerate(model.blocks):
        value = 0.8 - 0.6 * math.exp(-0.3 * depth)
        assert block.attn.layer_idx == depth
        assert torch.equal(diff_lambda_init(block.attn.depth, torch.float32), torch.tensor(value, dtype=torch.float32))
        assert torch.equal(block.attn.output_scale(), torch.tensor(1.0 - value, dtype=torch.float32))
    assert "blocks.0.attn.depth" not in model.state_dict()  # checkpoints are unchanged


@pytest.mark.parametrize("shape", [dict(n_head=4, n_query_groups=2), dict(n_head=4, n_query_groups=4),
                                   dict(n_head=8, n_query_groups=2)], ids=["h4g2", "h4g4", "h8g2"])
def test_diff_attn_adds_only_lambdas_and_the_head_norm(shape):
    """Same q, k, v and output projections as the baseline; 4 * hs lambdas and a 2 * hs
    RMSNorm gain per layer on top."""
    base = build_model(config("baseline", **shape))
    diff = build_model(config("diff_attn", **shape))
    hs, n_layer = diff.config.head_size, diff.config.n_layer
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(diff) - count(base) == 6 * hs * n_layer


@pytest.mark.parametrize("shape", [dict(n_head=1), dict(n_head=4, n_query_groups=1),
                                   dict(n_head=6, n_query_groups=3, n_embd=36)],
                         ids=["one-head", "mqa", "odd-groups"])
def test_diff_attn_refuses_odd_head_or_group_counts(shape):
    with pytest.raises(ValueError, match="even"):
        build_model(config("diff_attn", **{"n_query_groups": None, **shape}))


# ---------------------------------------------------------------- talking_heads

def talking_heads_reference(blk, x, cos, sin):
    """Shazeer et al. 2020: J_h = q_h k_h^T / sqrt(hs); J'_g = sum_h J_h P_l[h, g]; causal mask;
    W = softmax(J'); U_g = sum_h W_h P_w[h, g]; y_g = U_g v_g (v_g: head g's key/value group)."""
    H, G = blk.n_head, blk.n_query_groups
    qs, ks, vs = heads(blk, x)
    scale = 1.0 / math.sqrt(blk.head_size)
    J = [rope(qs[h], cos, sin) @ rope(ks[group_of(h, H, G)], cos, sin).transpose(-2, -1) * scale
         for h in range(H)]
    P_l, P_w = blk.logits_mix, blk.weights_mix
    W = [masked_softmax(sum(J[h] * P_l[h, g] for h in range(H))) for g in range(H)]
    U = [sum(W[h] * P_w[h, g] for h in range(H)) for g in range(H)]
    ys = [U[g] @ vs[group_of(g, H, G)] for g in range(H)]
    return linear(torch.cat(ys, dim=-1), blk.proj), torch.stack(U, dim=1)


@pytest.mark.parametrize("kernel", ["auto", "explicit"])
@pytest.mark.parametrize("shape", [dict(n_query_groups=2), dict(n_query_groups=4), dict(n_query_groups=1)],
                         ids=["gqa", "mha", "mqa"])
def test_talking_heads_mixes_logits_and_weights_across_heads(shape, kernel):
    """Weights: U, the mixed weights that multiply the values. P_l, P_w random, not the identity."""
    model, blk = build("talking_heads", attn_kernel=kernel, **shape)
    H = blk.n_head
    assert blk.logits_mix.shape == blk.weights_mix.shape == (H, H)
    assert not torch.allclose(blk.logits_mix, torch.eye(H, dtype=blk.logits_mix.dtype))
    x, cos, sin = block_input(model)
    with torch.no_grad():
        expected, U = talking_heads_reference(blk, x, cos, sin)
    check(blk, x, cos, sin, expected, U)


def test_talking_heads_starts_as_multi_head_attention():
    """P_l = P_w = I after build_model, so the block is the baseline's attention."""
    model = build_model(config("talking_heads"), seed=0)
    for block in model.blocks:
        assert torch.equal(block.attn.logits_mix.data, torch.eye(4))
        assert torch.equal(block.attn.weights_mix.data, torch.eye(4))
    model = model.double()
    blk = model.blocks[0].attn
    x, cos, sin = block_input(model)
    with torch.no_grad():
        expected, probs = baseline_reference(blk, x, cos, sin)
    check(blk, x, cos, sin, expected, probs)


def test_talking_heads_refuses_one_head():
    with pytest.raises(ValueError, match="n_head"):
        build_model(config("talking_heads", n_head=1, n_query_groups=1))


@pytest.mark.parametrize("kernel", ["sdpa", "flex"])
def test_talking_heads_refuses_fused_kernels(kernel):
    with pytest.raises(ValueError, match="explicit"):
        build_model(config("talking_heads", attn_kernel=kernel))

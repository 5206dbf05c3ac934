"""alibi, forgetting, softcap, sliding_window and attn_sink against their papers' formulas.

As in ``tests/test_variant_formulas.py`` (whose pieces this file reuses: the fused
projection read as heads, RoPE, the block input, ``check``), each reference is written
from the paper's equations with plain torch ops and reads only the block's parameters,
every one redrawn at random first; blocks and references run in float64 and agree to
1e-10 on every kernel the variant can use on CPU (flex forward-only, under no_grad),
outputs and the analysis weights (``need_weights=True``) alike.

The per-variant piece of each reference is the paper's own wording: ALiBi's bias
-m_h * (i - j) with the slopes written out by hand, the forget gates' sum of log f_l over
l = j+1..i as a loop, the window as p_i - w < j <= p_i, the sink's exp(a_h) added to the
denominator.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from attnlab.model import build_model
from test_variant_formulas import (ALL_KERNELS, T, _quiet_unfused_flex_warning, block_input, check,  # noqa: F401
                                   close, config, group_of, heads, linear, rms_norm, rope, run)
from variants import get_variant
from variants.registry import supported_kernels

TOL_FP64 = dict(rtol=0.0, atol=1e-10)
TOL_DECODE = dict(rtol=1e-5, atol=1e-5)  # float32 model, as tests/test_variants.py


def kernels(variant: str, **options) -> list[str]:
    """``auto`` and the kernels that can run the variant (on CPU, forward)."""
    can = supported_kernels(get_variant(variant), config(variant, variant_options=options))
    return [k for k in ALL_KERNELS if k == "auto" or k in can]


@torch.no_grad()
def randomise(blk, seed: int) -> None:
    """Every parameter of the block redrawn: norm gains around 1, vectors (biases, sink logits)
    of order one, Linear weights scaled so their outputs are of order one."""
    g = torch.Generator().manual_seed(seed)
    for name, p in blk.named_parameters():
        r = torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype)
        if "norm" in name:
            p.copy_(1.0 + 0.5 * r)
        elif p.ndim == 1:
            p.copy_(r)
        else:
            p.copy_(r / math.sqrt(p.shape[1]))


def build(variant: str, kernel: str, options: dict | None = None, seed: int = 0, **overrides):
    """A float64 model and its first block's attention, parameters redrawn."""
    model = build_model(config(variant, attn_kernel=kernel, variant_options=options or {}, **overrides),
                        seed=seed).double()
    blk = model.blocks[0].attn
    randomise(blk, seed=100 + seed)
    return model, blk


def build_with_option(variant: str, kernel: str, name: str, value, default):
    """``build`` with option ``name`` = value, or left unset (value None); the value in force
    (``default``, the paper's, written here, so the declared default is checked too), and the
    block's input."""
    model, blk = build(variant, kernel, {} if value is None else {name: value})
    return blk, default if value is None else value, *block_input(model)


def softmax_reference(blk, x, cos, sin, *, bias=None, allowed=None, cap=None, sink=None, rotary=True):
    """Per head h: s = q_h k_g^T / sqrt(hs) (q, k RoPE-rotated when ``rotary``); s = cap tanh(s / cap)
    with ``cap``; s += bias(h) (T, T) or (B, T, T); keys j of query i where allowed(i, j)
    (default j <= i); w = exp(s) / (sum_j exp(s) + exp(sink(h))), the sink term only with
    ``sink``; y_h = w v_g. Returns the heads side by side (B, T, H * hs) and w (B, H, T, T)."""
    H, G = blk.n_head, blk.n_query_groups
    qs, ks, vs = heads(blk, x)
    n = x.shape[1]
    mask = torch.tensor([[(j <= i) if allowed is None else allowed(i, j) for j in range(n)] for i in range(n)])
    ys, ws = [], []
    for h in range(H):
        g = group_of(h, H, G)
        q, k = (rope(qs[h], cos, sin), rope(ks[g], cos, sin)) if rotary else (qs[h], ks[g])
        s = q @ k.transpose(-2, -1) / math.sqrt(blk.head_size)
        if cap is not None:
            s = cap * torch.tanh(s / cap)
        if bias is not None:
            s = s + bias(h)
        e = torch.exp(s) * mask
        denominator = e.sum(-1, keepdim=True) + (0.0 if sink is None else torch.exp(sink(h)))
        w = e / denominator
        ws.append(w)
        ys.append(w @ vs[g])
    return torch.cat(ys, dim=-1), torch.stack(ws, dim=1)


def check_softmax_reference(blk, x, cos, sin, tol: dict = TOL_FP64, **reference) -> Tensor:
    """The block against ``softmax_reference(**reference)`` and the output projection (``check``:
    output, then output and weights with ``need_weights``); returns the expected output."""
    with torch.no_grad():
        y, weights = softmax_reference(blk, x, cos, sin, **reference)
        expected = linear(y, blk.proj)
    check(blk, x, cos, sin, expected, weights, tol, weights_tol=TOL_FP64)
    return expected


def decode_token_by_token(model, idx: Tensor, prompt: int) -> Tensor:
    """Logits of ``idx`` from a prompt of ``prompt`` tokens, then one token at a time."""
    caches = model.new_kv_caches(batch_size=idx.shape[0])
    steps = [model(idx[:, :prompt], caches)] + [model(idx[:, t:t + 1], caches) for t in range(prompt, idx.shape[1])]
    return torch.cat(steps, dim=1)


def tokens(n: int = 14, batch: int = 2, seed: int = 3) -> Tensor:
    return torch.randint(0, 100, (batch, n), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- alibi

# Press et al. 2022: 2^(-8h/n) for n a power of 2; otherwise the 2^floor(log2 n) slopes of that
# many heads, then the 1st, 3rd, 5th, ... slopes of twice that many heads until there are n.
PAPER_SLOPES = {
    1: [2 ** -8],
    4: [2 ** -2, 2 ** -4, 2 ** -6, 2 ** -8],
    6: [2 ** -2, 2 ** -4, 2 ** -6, 2 ** -8, 2 ** -1, 2 ** -3],
    8: [1 / 2, 1 / 4, 1 / 8, 1 / 16, 1 / 32, 1 / 64, 1 / 128, 1 / 256],
    12: [2 ** -1, 2 ** -2, 2 ** -3, 2 ** -4, 2 ** -5, 2 ** -6, 2 ** -7, 2 ** -8,
         2 ** -0.5, 2 ** -1.5, 2 ** -2.5, 2 ** -3.5],
}
ALIBI_SHAPES = [dict(n_head=4, n_query_groups=2), dict(n_head=6, n_query_groups=3, n_embd=48),
                dict(n_head=8, n_query_groups=1, n_embd=64)]


@pytest.mark.parametrize("kernel", kernels("alibi"))
@pytest.mark.parametrize("shape", ALIBI_SHAPES, ids=["h4g2", "h6g3", "h8-mqa"])
def test_alibi_adds_minus_slope_times_distance_without_rope(shape, kernel):
    """s_ij = q_i . k_j / sqrt(hs) - m_h (i - j), no RoPE; weights: the softmax probabilities."""
    model, blk = build("alibi", kernel, **shape)
    assert model.config.rope_n_elem == 0  # rotary_percentage=0: no RoPE
    x, cos, sin = block_input(model)
    slopes = PAPER_SLOPES[blk.n_head]
    distance = torch.tensor([[float(i - j) for j in range(T)] for i in range(T)], dtype=torch.float64)
    check_softmax_reference(blk, x, cos, sin, bias=lambda h: -slopes[h] * distance, rotary=False)


@pytest.mark.parametrize("n_head", sorted(PAPER_SLOPES))
def test_alibi_slopes_are_the_papers(n_head):
    """Exact for powers of two and 6 heads (all powers of 2); 12 heads has 2^-0.5 etc.,
    kept in float32 like the model."""
    model = build_model(config("alibi", n_head=n_head, n_query_groups=n_head, n_embd=8 * n_head))
    slopes = model.blocks[0].attn.slopes
    expected = torch.tensor(PAPER_SLOPES[n_head], dtype=torch.float64)
    tol = TOL_FP64 if n_head != 12 else dict(rtol=1e-7, atol=0.0)
    close(slopes, expected, tol)


def test_alibi_has_no_extra_parameters_and_slopes_are_not_saved():
    alibi, base = build_model(config("alibi")), build_model(config("baseline"))
    assert sum(p.numel() for p in alibi.parameters()) == sum(p.numel() for p in base.parameters())
    assert not any("slopes" in name for name in alibi.state_dict())


# ---------------------------------------------------------------- forgetting

FORGETTING_OPTIONS = [dict(), dict(output_gate=True), dict(output_norm=True),
                      dict(output_gate=True, output_norm=True)]
FORGETTING_IDS = ["plain", "gate", "norm", "pro"]


def forgetting_reference(blk, x, cos, sin, options: dict, eps: float):
    """Lin et al. 2025: f_t = sigmoid(w_f . x_t + b_f) per head; s_ij += sum_{l=j+1..i} log f_l;
    softmax; no RoPE. Pro extras: per-head RMSNorm of the output (gain per channel), then
    y * sigmoid(x W_o); then the output projection."""
    H, hs = blk.n_head, blk.head_size
    log_f = torch.log(torch.sigmoid(linear(x, blk.forget_gate)))  # (B, T, H)

    def decay(h):  # (B, T, T): entry (i, j) = sum of log f_l over j < l <= i (0 above the diagonal, masked)
        rows = [torch.stack([log_f[:, j + 1:i + 1, h].sum(1) if j <= i else torch.zeros(x.shape[0], dtype=x.dtype)
                             for j in range(T)], dim=-1) for i in range(T)]
        return torch.stack(rows, dim=1)

    y, probs = softmax_reference(blk, x, cos, sin, bias=decay, rotary=False)
    if options.get("output_norm"):
        gain = blk.output_norm.weight
        y = torch.cat([rms_norm(y[..., h * hs:(h + 1) * hs], gain[h * hs:(h + 1) * hs], eps) for h in range(H)], -1)
    if options.get("output_gate"):
        y = y * torch.sigmoid(linear(x, blk.out_gate))
    return linear(y, blk.proj), probs


@pytest.mark.parametrize("kernel", kernels("forgetting"))
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("options", FORGETTING_OPTIONS, ids=FORGETTING_IDS)
def test_forgetting_adds_the_log_forget_gates_between_key_and_query(options, bias, kernel):
    model, blk = build("forgetting", kernel, options, bias=bias, norm_eps=0.05)
    H, hs, C = blk.n_head, blk.head_size, model.config.n_embd
    assert model.config.rope_n_elem == 0
    assert blk.forget_gate.weight.shape == (H, C) and blk.forget_gate.bias is not None
    if options.get("output_gate"):
        assert blk.out_gate.weight.shape == (H * hs, C) and (blk.out_gate.bias is not None) == bias
    if options.get("output_norm"):
        assert blk.output_norm.weight.shape == (H * hs,)
    x, cos, sin = block_input(model)
    with torch.no_grad():
        expected, probs = forgetting_reference(blk, x, cos, sin, options, model.config.norm_eps)
    check(blk, x, cos, sin, expected, probs, TOL_FP64)


def test_forgetting_gate_starts_as_the_authors():
    """Their data-dependent gate: weights N(0, init_std), bias 0 (no special bias init)."""
    model = build_model(config("forgetting", n_embd=256, n_head=4), seed=0)
    for block in model.blocks:
        gate = block.attn.forget_gate
        assert torch.equal(gate.bias.data, torch.zeros(4))
        assert abs(gate.weight.std().item() - model.config.init_std) < 0.1 * model.config.init_std



@pytest.mark.parametrize("options, expected", [
    ({}, [0.0] * 4),
    ({"gate_bias_init": "zero"}, [0.0] * 4),
    ({"gate_bias_init": "constant", "gate_bias": 3.5}, [3.5] * 4),
    # Decay times 2, 8, 32, 128 tokens: -1 / log sigmoid(b_h) = T_h, written out per head.
    ({"gate_bias_init": "range", "decay_time_min": 2.0, "decay_time_max": 128.0},
     [-math.log(math.expm1(1 / t)) for t in (2.0, 8.0, 32.0, 128.0)]),
])
def test_forgetting_gate_bias_init_options(options, expected):
    model = build_model(config("forgetting", n_embd=64, n_head=4, variant_options=options), seed=0)
    for block in model.blocks:
        bias = block.attn.forget_gate.bias.data.double()
        assert torch.allclose(bias, torch.tensor(expected, dtype=torch.float64), rtol=1e-6, atol=1e-6)
        if options.get("gate_bias_init") == "range":
            decay = -1 / torch.nn.functional.logsigmoid(bias)
            assert torch.allclose(decay, torch.tensor([2.0, 8.0, 32.0, 128.0], dtype=torch.float64), rtol=1e-5)
        assert abs(block.attn.forget_gate.weight.std().item() - model.config.init_std) < 0.2 * model.config.init_std


@pytest.mark.parametrize("options, message", [
    ({"gate_bias_init": "ones"}, "gate_bias_init must be one of zero, constant, range"),
    ({"gate_bias": 1.0}, "gate_bias=1.0 is only used with gate_bias_init=constant"),
    ({"gate_bias_init": "range", "decay_time_min": 8.0, "decay_time_max": 2.0}, "0 < min <= max"),
])
def test_forgetting_gate_bias_init_errors(options, message):
    with pytest.raises(ValueError, match=message):
        build_model(config("forgetting", n_embd=64, n_head=4, variant_options=options), seed=0)

@pytest.mark.parametrize("kernel", ["sdpa", "flex", "explicit"])
@pytest.mark.parametrize("options", FORGETTING_OPTIONS, ids=FORGETTING_IDS)
def test_forgetting_decoding_token_by_token_is_the_full_forward(options, kernel):
    """The cumulative log-gates continue across cache steps; the cache keeps c_t of every position."""
    model = build_model(config("forgetting", attn_kernel=kernel, variant_options=options)).eval()
    for block in model.blocks:
        randomise(block.attn, seed=7)
    idx = tokens()
    with torch.no_grad():
        full = model(idx)
        caches = model.new_kv_caches(batch_size=2)
        steps = [model(idx[:, :5], caches)] + [model(idx[:, t:t + 1], caches) for t in range(5, idx.shape[1])]
        # What the cache kept for the first layer: c_t = sum_{l<=t} log f_l of the block input.
        x = model.blocks[0].norm_1(model.wte(idx))
        log_f = torch.log(torch.sigmoid(linear(x, model.blocks[0].attn.forget_gate)))
        c = torch.stack([log_f[:, :t + 1].sum(1) for t in range(idx.shape[1])], dim=-1)  # (B, H, T)
    close(torch.cat(steps, dim=1), full, TOL_DECODE)
    close(caches[0].extra["forget_cumsum"][..., :idx.shape[1]], c, TOL_DECODE)


# ---------------------------------------------------------------- softcap

@pytest.mark.parametrize("kernel", kernels("softcap"))
@pytest.mark.parametrize("cap", [0.7, 5.0, None], ids=["cap0.7", "cap5", "default"])
def test_softcap_caps_the_scaled_logits_with_tanh_before_the_softmax(cap, kernel):
    """Gemma 2: s = c tanh((q . k / sqrt(hs)) / c); softmax; RoPE as the baseline. Default c = 50."""
    blk, c, x, cos, sin = build_with_option("softcap", kernel, "cap", cap, default=50.0)
    expected = check_softmax_reference(blk, x, cos, sin, cap=c)
    with torch.no_grad():
        uncapped = linear(softmax_reference(blk, x, cos, sin)[0], blk.proj)
    assert (expected - uncapped).abs().max() > (1e-2 if c < 1 else 1e-8)  # so the cap is applied


# ---------------------------------------------------------------- sliding_window

@pytest.mark.parametrize("kernel", kernels("sliding_window"))
@pytest.mark.parametrize("window", [1, 4, None], ids=["w1", "w4", "default"])
def test_sliding_window_sees_only_the_last_w_keys(window, kernel):
    """Keys p_i - w < j <= p_i, the query's own included; softmax over them; RoPE as the baseline."""
    blk, w, x, cos, sin = build_with_option("sliding_window", kernel, "window", window, default=64)
    check_softmax_reference(blk, x, cos, sin, allowed=lambda i, j: i - w < j <= i)
    weights = run(blk, x, cos, sin, need_weights=True).weights
    assert ((weights > 0).sum(-1) == torch.arange(1, T + 1).clamp(max=w)).all()


@pytest.mark.parametrize("kernel", ["sdpa", "flex", "explicit"])
def test_sliding_window_decoding_with_a_window_smaller_than_the_prompt(kernel):
    """A prompt of 6 tokens with w = 3, then one token at a time: the cache holds keys the
    window no longer shows, and the result is still the full forward's."""
    model = build_model(config("sliding_window", attn_kernel=kernel, variant_options={"window": 3})).eval()
    wide = build_model(config("sliding_window", attn_kernel=kernel, variant_options={"window": 32})).eval()
    wide.load_state_dict(model.state_dict())
    idx = tokens()
    with torch.no_grad():
        full, decoded = model(idx), decode_token_by_token(model, idx, prompt=6)
        assert (wide(idx)[:, 3:] - full[:, 3:]).abs().max() > 1e-3  # the window bites
    close(decoded, full, TOL_DECODE)


# ---------------------------------------------------------------- attn_sink

@pytest.mark.parametrize("kernel", kernels("attn_sink"))
@pytest.mark.parametrize("learned", [True, False], ids=["learned", "off-by-one"])
def test_attn_sink_adds_exp_sink_logit_to_the_denominator(learned, kernel):
    """w_ij = exp(s_ij) / (sum_j' exp(s_ij') + exp(a_h)); a_h learned per head, or 0 (off-by-one
    softmax, no parameter). Weights: the real keys' share, each row below one."""
    model, blk = build("attn_sink", kernel, {"learned": learned})
    H = blk.n_head
    if learned:
        assert isinstance(blk.sink, torch.nn.Parameter) and blk.sink.shape == (H,)
        assert blk.sink.abs().min() > 0  # redrawn
        a = blk.sink
    else:
        assert "sink" not in dict(blk.named_parameters())
        a = torch.zeros(H, dtype=torch.float64)
    x, cos, sin = block_input(model)
    check_softmax_reference(blk, x, cos, sin, TOL_FP64, sink=lambda h: a[h])
    row_sums = run(blk, x, cos, sin, need_weights=True).weights.sum(-1)
    assert (row_sums < 1).all() and (row_sums > 0).all()

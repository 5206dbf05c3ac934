"""Where a paper leaves a choice open, each variant's default follows its authors' code; the
other value is attnlab's earlier convention, which reference/zoo and reference/recall were
trained with and which their experiment configs pin (``variant_defaults``).

Each default is checked against a float64 transcription of the authors' behaviour written
from its description (the pieces are tests/test_variant_formulas.py's); each old value
against the formula the existing tests use for it.
"""

from __future__ import annotations

import math

import pytest
import torch

from attnlab.model import build_model, param_generator
from test_training import compose_config
from test_variant_formulas import (_quiet_unfused_flex_warning, block_input, build, causal, check,  # noqa: F401
                                   close, config, diff_reference, group_of, heads, linear, randomise, rms_norm,
                                   rope, run, sigmoid_reference)
from test_variant_formulas_zoo import build as build_zoo
from test_variant_formulas_zoo import check_softmax_reference, kernels
from variants import resolve

# ---------------------------------------------------------------- diff_attn: kv_pairing, sub_norm_eps

# (n_head, n_query_groups) -> r = n_head / n_query_groups differential heads per key group:
# r = 1 (MHA, both pairings agree), 2 and 4 (both maps share a key head), 3 (some pairs mix).
PAIRING_SHAPES = [dict(n_head=4, n_query_groups=4), dict(n_head=4, n_query_groups=2),
                  dict(n_head=8, n_query_groups=2), dict(n_head=6, n_query_groups=2, n_embd=48)]


def authors_key_heads(n_head: int, n_query_groups: int):
    """The authors' GQA: their 2 * n_kv key heads each repeated r times, then read in pairs as
    their 2 * n_heads query heads are; map m of differential head i takes key head (2i + m) // r."""
    r = n_head // n_query_groups
    return lambda i: ((2 * i) // r, (2 * i + 1) // r)


@pytest.mark.parametrize("kernel", ["auto", "sdpa", "explicit"])
@pytest.mark.parametrize("shape", PAIRING_SHAPES, ids=["h4g4", "h4g2", "h8g2", "h6g2"])
def test_diff_attn_default_pairs_keys_and_sets_the_norm_eps_as_the_authors(shape, kernel):
    model, blk = build("diff_attn", attn_kernel=kernel, **shape)
    assert blk.sub_norm.eps == 1e-5 and model.config.norm_eps == 1e-6
    x, cos, sin = block_input(model)
    with torch.no_grad():
        expected, maps = diff_reference(blk, x, cos, sin, 0, 1e-5,
                                        key_heads=authors_key_heads(shape["n_head"], shape["n_query_groups"]))
        separate, _ = diff_reference(blk, x, cos, sin, 0, 1e-5)
    check(blk, x, cos, sin, expected, maps)
    if shape["n_head"] != shape["n_query_groups"]:
        assert (expected - separate).abs().max() > 1e-3  # the pairing is seen


def test_diff_attn_separate_pairing_and_model_eps_are_the_earlier_block():
    """kv_pairing=separate, sub_norm_eps=null: each map its own key head of the group and the
    model's norm_eps, the formula tests/test_variant_formulas.py checks on every kernel."""
    options = {"kv_pairing": "separate", "sub_norm_eps": None}
    model, blk = build("diff_attn", norm_eps=0.05, variant_options=options)
    assert blk.sub_norm.eps == 0.05
    x, cos, sin = block_input(model)
    with torch.no_grad():
        expected, maps = diff_reference(blk, x, cos, sin, 0, 0.05)
    check(blk, x, cos, sin, expected, maps)


# ---------------------------------------------------------------- sigmoid_attn: n, qk_norm

def sigmoid_qk_norm_reference(blk, x, cos, sin, n: int, eps: float):
    """sigmoid(RoPE(RMSNorm(q_h) g_q) . RoPE(RMSNorm(k_g) g_k) / sqrt(hs) - log n), causal, unnormalised."""
    H, G = blk.n_head, blk.n_query_groups
    qs, ks, vs = heads(blk, x)
    ys, ws = [], []
    for h in range(H):
        g = group_of(h, H, G)
        q = rope(rms_norm(qs[h], blk.q_norm.weight, eps), cos, sin)
        k = rope(rms_norm(ks[g], blk.k_norm.weight, eps), cos, sin)
        w = torch.sigmoid(q @ k.transpose(-2, -1) / math.sqrt(blk.head_size) - math.log(n)) * causal(x.shape[1])
        ws.append(w)
        ys.append(w @ vs[g])
    return linear(torch.cat(ys, dim=-1), blk.proj), torch.stack(ws, dim=1)


@pytest.mark.parametrize("kernel", ["auto", "explicit"])
def test_sigmoid_attn_default_is_qk_norm_and_n_the_training_seq_len(kernel):
    resolved = resolve(config("sigmoid_attn", attn_kernel=kernel), seq_len=16)[1]
    assert resolved.variant_options == {"n": 16, "qk_norm": True}  # the run's number, saved as such
    assert resolve(resolved, seq_len=16)[1] == resolved
    model = build_model(resolved).double()
    blk = model.blocks[0].attn
    randomise(blk, seed=100)  # norm gains away from 1
    x, cos, sin = block_input(model)
    with torch.no_grad():
        expected, weights = sigmoid_qk_norm_reference(blk, x, cos, sin, 16, model.config.norm_eps)
        at_block_size, _ = sigmoid_qk_norm_reference(blk, x, cos, sin, model.config.block_size, model.config.norm_eps)
    check(blk, x, cos, sin, expected, weights)
    assert (expected - at_block_size).abs().max() > 1e-2


def test_sigmoid_attn_n_is_the_runs_seq_len_where_the_run_is_built():
    cfg = compose_config(["variant=sigmoid_attn", "trainer.seq_len=64"])
    assert cfg.model.build(cfg.variant, 100, cfg.trainer.seq_len).variant_options == {"n": 64, "qk_norm": True}
    # Outside a training run no sequence length is known: the block_size, the longest.
    outside = resolve(config("sigmoid_attn"))[1]
    assert outside.variant_options["n"] == "seq_len"
    assert build_model(outside).blocks[0].attn.spec.sigmoid_bias == pytest.approx(-math.log(outside.block_size))


def test_sigmoid_attn_block_size_without_qk_norm_is_the_earlier_block():
    model, blk = build("sigmoid_attn", variant_options={"n": "block_size", "qk_norm": False})
    assert not any("norm" in name for name, _ in blk.named_parameters())
    x, cos, sin = block_input(model)
    with torch.no_grad():
        expected, weights = sigmoid_reference(blk, x, cos, sin, model.config.block_size)
    check(blk, x, cos, sin, expected, weights)


# ---------------------------------------------------------------- sliding_window: window_convention

@pytest.mark.parametrize("kernel", kernels("sliding_window"))
@pytest.mark.parametrize("convention", [None, "hf", "attention_gym"], ids=["default", "hf", "attention_gym"])
def test_sliding_window_conventions_count_the_window_as_named(convention, kernel):
    """hf (default): keys with q - k < w, w in all (Hugging Face's Mistral mask); attention_gym:
    q - k <= w, w + 1 in all."""
    options = {"window": 4} if convention is None else {"window": 4, "window_convention": convention}
    model, blk = build_zoo("sliding_window", kernel, options)
    x, cos, sin = block_input(model)
    if (convention or "hf") == "hf":
        allowed, n_keys = (lambda i, j: 0 <= i - j < 4), 4
    else:
        allowed, n_keys = (lambda i, j: 0 <= i - j <= 4), 5
    check_softmax_reference(blk, x, cos, sin, allowed=allowed)
    weights = run(blk, x, cos, sin, need_weights=True).weights
    assert ((weights > 0).sum(-1) == torch.arange(1, x.shape[1] + 1).clamp(max=n_keys)).all()


# ---------------------------------------------------------------- attn_sink: sink_init

def test_attn_sink_default_init_is_torchtitans_truncated_normal():
    """a_h ~ N(0, std^2) truncated to [-2, 2], std = init_std / sqrt(2 (l + 1)) at 0-based depth l,
    drawn from the parameter's own generator (seed, name) as every other weight."""
    seed = 7
    model = build_model(config("attn_sink", n_layer=3, n_head=16, n_query_groups=16, n_embd=64), seed=seed)
    for layer, block in enumerate(model.blocks):
        std = model.config.init_std / math.sqrt(2 * (layer + 1))
        expected = torch.nn.init.trunc_normal_(torch.empty(16), std=std, a=-2.0, b=2.0,
                                               generator=param_generator(seed, f"blocks.{layer}.attn.sink"))
        close(block.attn.sink.detach(), expected, dict(rtol=0.0, atol=0.0))
        assert block.attn.sink.abs().min() > 0


def test_attn_sink_zero_init_is_the_earlier_off_by_one_start():
    model = build_model(config("attn_sink", variant_options={"sink_init": "zero"}), seed=7)
    assert all((block.attn.sink == 0).all() for block in model.blocks)


# ---------------------------------------------------------------- the reference experiments keep the old ones

OLD_CONVENTIONS = {"diff_attn": {"kv_pairing": "separate", "sub_norm_eps": None},
                   "sigmoid_attn": {"n": "block_size", "qk_norm": False},
                   "sliding_window": {"window": 64, "window_convention": "hf"},
                   "attn_sink": {"learned": True, "sink_init": "zero"}}


@pytest.mark.parametrize("experiment", ["zoo", "recall"])
@pytest.mark.parametrize("variant", sorted(OLD_CONVENTIONS))
def test_reference_experiments_pin_the_conventions_they_were_trained_with(experiment, variant):
    cfg = compose_config([f"experiment={experiment}", f"variant={variant}"])
    assert dict(cfg.variant.options) == OLD_CONVENTIONS[variant]
    cfg.validate()
    # The command line still wins over the experiment's per-variant values.
    name, value = {"diff_attn": ("kv_pairing", "authors"), "sigmoid_attn": ("qk_norm", True),
                   "sliding_window": ("window_convention", "attention_gym"),
                   "attn_sink": ("sink_init", "trunc_normal")}[variant]
    cfg = compose_config([f"experiment={experiment}", f"variant={variant}", f"variant.options.{name}={value}"])
    assert cfg.variant.options[name] == value


def test_variant_defaults_are_checked_against_the_registry():
    with pytest.raises(ValueError, match="variant_defaults.nope: unknown attention variant 'nope'"):
        compose_config(["+variant_defaults={nope: {x: 1}}"]).validate()
    with pytest.raises(ValueError, match="variant_defaults.attn_sink: variant 'attn_sink' has no option"):
        compose_config(["+variant_defaults={attn_sink: {sink: 1}}"]).validate()


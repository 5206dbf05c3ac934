"""The four seed variants compute exactly the study's math (docs/study.md), written out by hand here."""

import math

import pytest
import torch
import torch.nn.functional as F

from attnlab.attention import apply_rope, build_rope_cache
from attnlab.config import ModelConfig
from attnlab.model import build_model
from attnlab.params import parameter_breakdown
from conftest import tiny_config


def _study_attention(block, x, cos, sin, variant):
    """One head, no cache: the study's unfused block, from its description."""
    gelu = lambda t: F.gelu(t, approximate="tanh")  # noqa: E731
    C = x.shape[-1]
    W, b = block.qkv.weight, block.qkv.bias
    if variant == "sep_qkv":  # three separate Linear layers, each with bias and GELU
        q, k, v = (gelu(F.linear(x, W[i * C:(i + 1) * C], b[i * C:(i + 1) * C])) for i in range(3))
    else:
        qkv = F.linear(x, W, b)
        if variant == "gelu_bias":
            qkv = gelu(qkv)
        q, k, v = qkv.split(C, dim=-1)
    q, k = apply_rope(q.unsqueeze(1), cos, sin), apply_rope(k.unsqueeze(1), cos, sin)
    logits = q @ k.transpose(-2, -1) / math.sqrt(C)  # (B, 1, T, T)
    T = x.shape[1]
    if variant == "qk_scale":
        s = 0.1 * torch.tanh(block.score(x))  # (B, T, block_size)
        logits = logits + s.view(x.shape[0], 1, T, -1)[..., :T]
    logits = logits.masked_fill(torch.ones(T, T).triu(1).bool(), float("-inf"))
    y = (torch.softmax(logits, -1) @ v.unsqueeze(1)).squeeze(1)
    y = block.proj(y)
    return gelu(y) if variant == "gelu_bias" else y


@pytest.mark.parametrize("variant", ["baseline", "gelu_bias", "sep_qkv", "qk_scale"])
def test_block_matches_the_study_formula(variant):
    config = tiny_config(variant, n_head=1, n_query_groups=1)
    block = build_model(config).blocks[0].attn
    with torch.no_grad():  # random biases, so that a bias wired wrongly shows
        for p in block.parameters():
            p.normal_(0, 0.3)
    x = torch.randn(2, 16, config.n_embd)
    cos, sin = build_rope_cache(16, config.rope_n_elem, config.rope_base)
    expected = _study_attention(block, x, cos, sin, variant)
    torch.testing.assert_close(block(x, cos, sin).output, expected, rtol=1e-5, atol=1e-5)


def test_bias_flags_follow_the_study():
    def biased(variant):
        model = build_model(tiny_config(variant))
        return sorted({n.split(".", 2)[-1] for n, _ in model.named_parameters() if n.endswith("bias")})

    assert biased("baseline") == []
    assert biased("gelu_bias") == ["attn.proj.bias", "attn.qkv.bias", "mlp.fc_1.bias",
                                   "mlp.fc_2.bias", "mlp.proj.bias"]
    assert biased("sep_qkv") == ["attn.qkv.bias"]
    assert biased("qk_scale") == ["attn.score.bias"]


# Exact counts at the study's size. Baseline: 2 x 35,008 x 620 (embedding, head) + 620 (final
# norm) + 10 x 6,002,840 per layer (qkv 1,153,200 + proj 384,400 + MLP 4,464,000 + norms 1,240).
SEED100M_PARAMS = {
    "baseline": 103_438_940,  # 103.44M, as the study reports
    "gelu_bias": 103_517_940,  # + 10 x (1,860 + 620 + 2,400 + 2,400 + 620) biases
    "sep_qkv": 103_457_540,  # + 10 x 1,860 (q, k, v biases)
    "qk_scale": 128_875_100,  # + 10 x (620 x 4,096 + 4,096) score Linear
}


@pytest.mark.parametrize("variant", sorted(SEED100M_PARAMS))
def test_exact_parameter_counts_at_seed100m(variant):
    counts = parameter_breakdown(ModelConfig.from_preset("seed100m", variant=variant))
    assert counts["total"] == SEED100M_PARAMS[variant]
    assert counts["embedding"] == counts["head"] == 35_008 * 620
    assert counts["extra_vs_baseline"] == SEED100M_PARAMS[variant] - SEED100M_PARAMS["baseline"]


def test_baseline_rounds_to_the_study_figure():
    total = parameter_breakdown(ModelConfig.from_preset("seed100m"))["total"]
    assert abs(total / 1e6 - 103.44) <= 0.01


def test_presets_have_their_documented_sizes():
    tiny = parameter_breakdown(ModelConfig.from_preset("tiny"))["total"]
    gqa = parameter_breakdown(ModelConfig.from_preset("gqa100m"))["total"]
    assert 1e6 < tiny < 5e6
    assert 90e6 < gqa < 110e6
    assert ModelConfig.from_preset("seed100m").padded_vocab_size == 35_008

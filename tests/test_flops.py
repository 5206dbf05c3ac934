"""FLOPs per token (PaLM form) and the device peak table."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from attnlab.config import ModelConfig
from attnlab.flops import DEVICE_PEAK_FLOPS, device_peak_flops, flops_per_token
from attnlab.model import build_model
from conftest import supported_config, tiny_config
from variants import available_variants

# tiny_config: vocab 100 -> 128 padded rows, 2 layers, 4 heads of 8, 2 query groups, C=32, I=64.
#   per layer: qkv 32 * (4 + 2*2) * 8 = 2048, proj 32 * 32 = 1024, MLP 3 * 32 * 64 = 6144
#   N = 2 * 9216 + lm_head 128 * 32 = 22528 (embedding excluded), 6N = 135168
#   attention at T=16: 12 * 2 layers * 4 heads * 8 * 16 = 12288
#   qk_scale adds its score Linear on the T used rows: 6 * 32 * 16 * 2 layers = 6144
EXPECTED_T16 = {"baseline": 147456, "gelu_bias": 147456, "sep_qkv": 147456, "qk_scale": 153600}


@pytest.mark.parametrize("variant", sorted(EXPECTED_T16))
def test_flops_per_token_matches_hand_count(variant):
    assert flops_per_token(tiny_config(variant), 16) == EXPECTED_T16[variant]


def test_qk_scale_counts_its_score_rows_up_to_block_size():
    # At T = block_size = 32 every score row is used: 6 * 32 * 32 per layer.
    assert flops_per_token(tiny_config("baseline"), 32) == 135168 + 24576
    assert flops_per_token(tiny_config("qk_scale"), 32) == 135168 + 24576 + 2 * 6 * 32 * 32


def test_seed100m_baseline_flops():
    # per layer 620*1860 + 620*620 + 3*620*2400 = 6,001,600; lm_head 35,008*620 = 21,704,960
    n = 10 * 6_001_600 + 21_704_960
    expected = 6 * n + 12 * 10 * 1 * 620 * 2048
    assert flops_per_token(ModelConfig.from_preset("seed100m"), 2048) == expected


@pytest.mark.parametrize("layout", [dict(n_head=1, n_query_groups=1), dict(n_head=4, n_query_groups=4),
                                    dict(n_head=4, n_query_groups=2)], ids=["mha1", "mha4", "gqa"])
@pytest.mark.parametrize("variant", available_variants())
def test_formula_equals_pytorch_flop_counter(variant, layout):
    """The matmul FLOPs of one forward + backward pass, counted by PyTorch, per token."""
    # The explicit kernel's matmuls are visible to the counter (the fused CPU kernel is not).
    model = build_model(supported_config(variant, "explicit", **layout))
    B, T = 2, 16
    idx = torch.randint(0, 100, (B, T))
    with FlopCounterMode(display=False) as counter:
        model(idx).square().mean().backward()
    assert counter.get_total_flops() / (B * T) == flops_per_token(model.config, T)


def test_seq_len_must_fit_the_block():
    with pytest.raises(ValueError, match="block_size=32"):
        flops_per_token(tiny_config(), 33)


@pytest.mark.parametrize("name, precision, expected", [
    ("NVIDIA H100 80GB HBM3", "bf16-mixed", 989.4e12),
    ("NVIDIA H100 80GB HBM3", torch.bfloat16, 989.4e12),
    ("NVIDIA H100 PCIe", "bf16-true", 756.5e12),
    ("NVIDIA H200", "bf16-mixed", 989.4e12),
    ("NVIDIA A100-SXM4-80GB", "bf16-mixed", 312e12),
    ("NVIDIA A100-SXM4-80GB", "16-mixed", 312e12),
    ("NVIDIA A100-SXM4-80GB", "32-true", 19.5e12),
    ("Tesla V100-SXM2-16GB", "bf16-mixed", None),  # no bf16 tensor cores
    ("Some Future GPU", "bf16-mixed", None),
])
def test_device_peak_flops(name, precision, expected):
    assert device_peak_flops(name, precision) == expected


def test_fp32_counts_at_tf32_peak_when_matmuls_may_use_tf32():
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("high")
        assert device_peak_flops("NVIDIA H100 80GB HBM3", "32-true") == 494.7e12
    finally:
        torch.set_float32_matmul_precision(before)


def test_cpu_has_no_built_in_peak():
    assert device_peak_flops(torch.device("cpu"), "32-true") is None
    assert device_peak_flops("cpu", "bf16-mixed") is None


def test_unknown_precision_is_one_clear_error():
    with pytest.raises(ValueError, match="unknown precision 'int3'"):
        device_peak_flops("cpu", "int3")


def test_peak_table_rows_are_dense_and_ordered_by_specificity():
    for chip, peaks in DEVICE_PEAK_FLOPS.items():
        assert set(peaks) <= {"fp32", "tf32", "bf16", "fp16", "fp8"}, chip
        assert all(1e12 < v < 1e16 for v in peaks.values()), chip
    names = list(DEVICE_PEAK_FLOPS)
    assert names.index("h100 pcie") < names.index("h100") and names.index("a100") < names.index("a10")

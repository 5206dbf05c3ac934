"""Every variant under bf16 autocast (as ``precision=bf16-mixed`` trains) and fp16 autocast
(``16-mixed``, a V100's or T4's) against its fp32 forward and gradients, on CPU: logits, normalisers
and sinks must not drift past the half type's own rounding, nor terms overflow fp16's range."""

import pytest
import torch
import torch.nn.functional as F

from attnlab.model import build_model
from conftest import supported_config
from variants import available_variants

# Measured here (T=256, n_embd=64, 2 layers, one seed): the largest logit error 0.8% of the largest
# |logit| (diff_attn), the gradient's relative error at most 0.6%; the same models cast wholly to
# bf16 err by ~0.5%. The tolerance is bf16's rounding of the inputs (2^-8 = 0.4%) times 5.
TOLERANCE = 2e-2
T = 256


def logits_and_gradient(model, idx, bf16: bool, half: torch.dtype = torch.bfloat16):
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=half, enabled=bf16):
        logits = model(idx[:, :-1])
    F.cross_entropy(logits.float().flatten(0, 1), idx[:, 1:].flatten()).backward()
    return logits.float().detach(), torch.cat([p.grad.float().flatten() for p in model.parameters()])


@pytest.mark.parametrize("kernel", ["sdpa", "explicit"])
@pytest.mark.parametrize("variant", available_variants())
def test_bf16_autocast_forward_and_gradients_match_fp32(variant, kernel):
    config = supported_config(variant, kernel, block_size=T, n_embd=64, intermediate_size=128)
    torch.manual_seed(0)
    model = build_model(config)
    idx = torch.randint(0, config.vocab_size, (2, T + 1))
    logits32, grad32 = logits_and_gradient(model, idx, bf16=False)
    logits16, grad16 = logits_and_gradient(model, idx, bf16=True)
    assert logits16.isfinite().all() and grad16.isfinite().all()
    logit_error = ((logits16 - logits32).abs().max() / logits32.abs().max()).item()
    grad_error = ((grad16 - grad32).norm() / grad32.norm()).item()
    assert logit_error <= TOLERANCE, f"{variant}/{kernel}: logits differ by {logit_error:.2%} of their range"
    assert grad_error <= TOLERANCE, f"{variant}/{kernel}: gradient differs by {grad_error:.2%} (relative norm)"


@pytest.mark.parametrize("kernel", ["sdpa", "explicit"])
@pytest.mark.parametrize("variant", available_variants())
def test_fp16_autocast_forward_and_gradients_match_fp32(variant, kernel):
    """precision=16-mixed, what trainer.precision=auto picks on a V100 or T4: fp16's range (65504)
    rather than its rounding is the risk, in terms and masks cast to the half dtype (a forgetting
    gate's cumulative log term, ALiBi's distances, a sink's logit)."""
    config = supported_config(variant, kernel, block_size=T, n_embd=64, intermediate_size=128)
    torch.manual_seed(0)
    model = build_model(config)
    idx = torch.randint(0, config.vocab_size, (2, T + 1))
    logits32, grad32 = logits_and_gradient(model, idx, bf16=False)
    logits16, grad16 = logits_and_gradient(model, idx, bf16=True, half=torch.float16)
    assert logits16.isfinite().all() and grad16.isfinite().all()
    logit_error = ((logits16 - logits32).abs().max() / logits32.abs().max()).item()
    grad_error = ((grad16 - grad32).norm() / grad32.norm()).item()
    print(f"{variant}/{kernel}: logits {logit_error:.3%}, gradient {grad_error:.3%}")
    assert logit_error <= TOLERANCE, f"{variant}/{kernel}: logits differ by {logit_error:.2%} of their range"
    assert grad_error <= TOLERANCE, f"{variant}/{kernel}: gradient differs by {grad_error:.2%} (relative norm)"


@pytest.mark.parametrize("kernel", ["sdpa", "explicit"])
def test_under_fp16_a_forgetting_term_past_fp16s_range_stays_finite(kernel):
    """A gate that forgets hard (log f = -400 a step) makes the cumulative term pass -65504, fp16's
    largest magnitude, within 256 tokens: it is summed in fp32 and only then cast, so a far key's
    logit becomes -inf (weight 0, as in fp32) and no inf - inf makes a NaN."""
    config = supported_config("forgetting", kernel, block_size=T, n_embd=64, intermediate_size=128)
    torch.manual_seed(0)
    model = build_model(config)
    with torch.no_grad():
        for block in model.blocks:
            block.attn.forget_gate.weight.zero_()
            block.attn.forget_gate.bias.fill_(-400.0)
    idx = torch.randint(0, config.vocab_size, (2, T + 1))
    logits32, grad32 = logits_and_gradient(model, idx, bf16=False)
    logits16, grad16 = logits_and_gradient(model, idx, bf16=True, half=torch.float16)
    assert logits16.isfinite().all() and grad16.isfinite().all()
    assert ((logits16 - logits32).abs().max() / logits32.abs().max()).item() <= TOLERANCE

"""Every variant under bf16 autocast (as ``precision=bf16-mixed`` trains) against its fp32 forward
and gradients, on CPU: logits, normalisers and sinks must not drift past bf16's own rounding."""

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


def logits_and_gradient(model, idx, bf16: bool):
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
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

"""``gelu_bias``: "non-linear activation + bias" from the study (docs/study.md).

Changes from ``baseline``:
- every Linear of the model gets a bias (the study switched the model-wide
  ``bias`` flag on, so the MLP's fc_1, fc_2 and proj get biases too; the
  lm_head stays bias-free);
- a tanh-approximated GELU is applied to the fused QKV projection output
  (before the split into q, k, v and before RoPE) and to the output
  projection's result.

Extra parameters: the biases, (H + 2G) * hs + C + 2 * intermediate + C per layer.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from variants.baseline import BaselineAttention
from variants.registry import register


@register("gelu_bias")
class GeluBiasAttention(BaselineAttention):
    """Biases on every Linear of the model; tanh-GELU after the QKV and the output projection."""

    paper = "the study's variant 2, \"non-linear activation + bias\" (docs/study.md)"
    model_settings = {"bias": True}

    def project_qkv(self, x: Tensor) -> Tensor:
        return F.gelu(self.qkv(x), approximate="tanh")

    def project_output(self, y: Tensor, x: Tensor) -> Tensor:
        return F.gelu(self.proj(y), approximate="tanh")

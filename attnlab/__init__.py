"""attnlab: attention-variant ablations on small LLaMA-style language models.

Re-exports the bottom layer only (the configuration); the model lives in
``attnlab.model`` (``from attnlab.model import build_model``), above ``variants``,
so that ``import attnlab`` and ``import variants`` work in either order.
"""

from attnlab.config import PRESETS, ModelConfig

__all__ = ["ModelConfig", "PRESETS"]

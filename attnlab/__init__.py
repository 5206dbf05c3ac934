"""attnlab: attention-variant ablations on small LLaMA-style language models."""

from attnlab.config import PRESETS, ModelConfig
from attnlab.model import GPT, build_model

__all__ = ["GPT", "ModelConfig", "PRESETS", "build_model"]

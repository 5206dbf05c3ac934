"""A LLaMA-2-style decoder whose attention block comes from the ``variants`` registry.

From the command line to a variant's ``forward``:
  1. ``python train.py variant=X``: Hydra composes ``configs/`` (the ``variant`` group is
     derived from the registry) into a ``TrainConfig``;
  2. ``ModelSection.build`` turns its ``model`` and ``variant`` sections into a ``ModelConfig``;
  3. ``build_model`` -> ``GPT``: ``variants.resolve`` looks ``X`` up once, checks its
     options, applies its model-wide settings and its kernel and shape limits;
  4. each ``Block`` instantiates the variant's class; its ``forward`` runs every step.

Plain PyTorch: no Lightning, no Hydra. Pre-norm blocks (RMSNorm -> attention ->
residual, RMSNorm -> SwiGLU MLP -> residual), a final RMSNorm and an untied
lm_head over the vocabulary padded to a multiple of 64.

Initialisation (``init_weights``) is a function of (seed, parameter name) only:
every parameter draws from its own generator seeded by its name, so the
embedding, MLP and norm weights are bit-identical across variants for the same
seed, whatever extra parameters a variant adds. Weights ~ N(0, init_std), the
two residual output projections (``attn.proj``, ``mlp.proj``) ~ N(0, init_std /
sqrt(2 * n_layer)) as in GPT-2, biases 0, norm weights 1.
"""

from __future__ import annotations

import math
import zlib

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from attnlab.attention import KVCache, build_rope_cache
from attnlab.config import ModelConfig
from attnlab.norm import RMSNorm
from variants import AttentionBlock, resolve


class LLaMAMLP(nn.Module):
    """SwiGLU: proj(silu(fc_1(x)) * fc_2(x))."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.fc_1 = nn.Linear(config.n_embd, config.mlp_hidden_size, bias=config.bias)
        self.fc_2 = nn.Linear(config.n_embd, config.mlp_hidden_size, bias=config.bias)
        self.proj = nn.Linear(config.mlp_hidden_size, config.n_embd, bias=config.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(F.silu(self.fc_1(x)) * self.fc_2(x))


class Block(nn.Module):
    def __init__(self, config: ModelConfig, attention: type[AttentionBlock], layer_idx: int) -> None:
        super().__init__()
        self.norm_1 = RMSNorm(config.n_embd, eps=config.norm_eps)
        self.attn = attention(config)
        self.attn.layer_idx = layer_idx
        self.norm_2 = RMSNorm(config.n_embd, eps=config.norm_eps)
        self.mlp = LLaMAMLP(config)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, kv_cache: KVCache | None = None,
                need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        attn_out, weights = self.attn(self.norm_1(x), cos, sin, kv_cache, need_weights)
        x = x + attn_out
        x = x + self.mlp(self.norm_2(x))
        return x, weights


class GPT(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        attention, config = resolve(config)
        self.config = config  # as resolved: the variant's options and model-wide settings applied
        self.wte = nn.Embedding(config.padded_vocab_size, config.n_embd)
        self.blocks = nn.ModuleList(Block(config, attention, i) for i in range(config.n_layer))
        self.norm_f = RMSNorm(config.n_embd, eps=config.norm_eps)
        self.lm_head = nn.Linear(config.n_embd, config.padded_vocab_size, bias=config.lm_head_bias)
        cos, sin = build_rope_cache(config.block_size, config.rope_n_elem, config.rope_base)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        # Training only (trainer.activation_checkpointing): each block keeps its input alone and
        # recomputes its activations in the backward; the same numbers, less memory.
        self.activation_checkpointing = False

    def forward(self, idx: Tensor, kv_caches: list[KVCache] | None = None) -> Tensor:
        """Token ids (B, T) -> logits (B, T, padded_vocab_size).

        With ``kv_caches`` (one per layer, see ``new_kv_caches``) idx continues
        the cached sequence: positions start at the caches' current length.
        """
        return self._forward(idx, kv_caches, need_weights=False)[0]

    @torch.no_grad()
    def attention_probs(self, idx: Tensor) -> list[Tensor]:
        """Attention weights per layer, each (B, H, T, T), computed by the explicit kernel
        from the variant's description (softmax probabilities unless the variant says otherwise)."""
        return self._forward(idx, None, need_weights=True)[1]

    def _forward(self, idx: Tensor, kv_caches: list[KVCache] | None, need_weights: bool
                 ) -> tuple[Tensor, list[Tensor]]:
        T = idx.shape[1]
        start = kv_caches[0].length if kv_caches else 0
        if start + T > self.config.block_size:
            raise ValueError(f"sequence of {start + T} tokens exceeds the model's block_size="
                             f"{self.config.block_size}")
        cos = self.rope_cos[start:start + T].to(self.wte.weight.dtype)
        sin = self.rope_sin[start:start + T].to(self.wte.weight.dtype)
        x = self.wte(idx)  # (B, T, C)
        all_weights = []
        recompute = (self.activation_checkpointing and self.training and torch.is_grad_enabled()
                     and kv_caches is None and not need_weights)
        for i, block in enumerate(self.blocks):
            if recompute:
                x, weights = checkpoint(block, x, cos, sin, use_reentrant=False)
                continue
            x, weights = block(x, cos, sin, kv_caches[i] if kv_caches else None, need_weights)
            if weights is not None:
                all_weights.append(weights)
        return self.lm_head(self.norm_f(x)), all_weights

    def compile_blocks(self, **compile_kwargs) -> None:
        """``torch.compile`` each block on its own, in place (regional compilation, as torchtitan
        does). The blocks share their code, so Dynamo traces one block and every layer reuses
        the compiled graph: compile time does not grow with depth, and each block stays a module
        of its own for FSDP's per-block sharding and activation checkpointing. The parameter
        names, and so the checkpoints, are those of the plain model."""
        for block in self.blocks:
            block.compile(**compile_kwargs)

    def new_kv_caches(self, batch_size: int, max_len: int | None = None) -> list[KVCache]:
        c = self.config
        p = self.wte.weight
        return [KVCache(batch_size, c.n_query_groups, max_len or c.block_size, c.head_size,
                        p.device, p.dtype) for _ in range(c.n_layer)]


def parameters_without_gradient(model: nn.Module) -> list[str]:
    """Trainable parameters that the last backward left without a gradient: they would never train
    (a forward that skips them, a fused kernel that dropped a term's gradient)."""
    return [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]


def param_generator(seed: int, name: str) -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32(f"{seed}:{name}".encode()))


@torch.no_grad()
def init_weights(model: GPT, seed: int) -> None:
    """Deterministic init by (seed, parameter name); see the module docstring. An attention
    block may initialise some of its own parameters (``AttentionBlock.init_parameter``)."""
    std = model.config.init_std
    residual_std = std / math.sqrt(2 * model.config.n_layer)
    owners = {f"blocks.{i}.attn.": block.attn for i, block in enumerate(model.blocks)}
    for name, param in model.named_parameters():
        generator = param_generator(seed, name)
        prefix = ".".join(name.split(".")[:3]) + "."
        if prefix in owners and owners[prefix].init_parameter(name.removeprefix(prefix), param, generator):
            continue
        if name.endswith(".bias"):
            param.zero_()
        elif "norm" in name:
            param.fill_(1.0)
        else:
            scale = residual_std if name.endswith(("attn.proj.weight", "mlp.proj.weight")) else std
            values = torch.randn(param.shape, generator=generator) * scale
            param.copy_(values)


def build_model(config: ModelConfig, seed: int = 0) -> GPT:
    model = GPT(config)
    init_weights(model, seed)
    return model

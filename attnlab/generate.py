"""Text generation from a ``GPT``: greedy or sampled, with or without the KV cache.

Sampling follows the usual order of logits processors (as in transformers'
``generate``): padded-vocabulary ids are masked, the CTRL repetition penalty
(Keskar et al., 2019) is applied to every id already in the sequence, then
temperature, top-k and top-p (nucleus, Holtzman et al., 2019). The study found
that small models repeat themselves with plain sampling and that a penalty of
about 1.1 helps, hence the default.

Randomness comes only from a ``torch.Generator`` seeded by ``seed``, so the
same seed gives the same text for every variant and every call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from attnlab.model import GPT


@dataclass
class SamplingConfig:
    """How to pick each next token. ``greedy=True`` ignores temperature, top-k and top-p.

    ``Optional`` rather than ``X | None``: evaluate.py uses this class as a Hydra schema.
    """

    max_new_tokens: int = 48
    greedy: bool = False
    temperature: float = 0.8
    top_k: Optional[int] = 50  # None or 0: no top-k filter
    top_p: Optional[float] = 0.95  # None or 1.0: no nucleus filter
    repetition_penalty: float = 1.1  # 1.0: off
    seed: int = 0
    use_kv_cache: bool = True
    stop_at_eos: bool = True

    def __post_init__(self) -> None:
        if self.max_new_tokens <= 0:
            raise ValueError(f"sampling.max_new_tokens must be positive, got {self.max_new_tokens}")
        if self.temperature <= 0:
            raise ValueError(f"sampling.temperature must be > 0 (a small one samples almost greedily), "
                             f"got {self.temperature}")
        if self.top_k is not None and self.top_k < 0:
            raise ValueError(f"sampling.top_k must be >= 0 (0 or null: off), got {self.top_k}")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"sampling.top_p must be in (0, 1] (1 or null: off), got {self.top_p}")
        if self.repetition_penalty < 1.0:
            raise ValueError(f"sampling.repetition_penalty must be >= 1.0 (1.0: off), got {self.repetition_penalty}")


def check_fits_context(n_prompt: int, max_new_tokens: int, block_size: int,
                       new_tokens_setting: str = "max_new_tokens") -> None:
    """Raise before any work if the prompt, or prompt plus new tokens, exceed the context.
    ``new_tokens_setting``: the name the caller's user sets ``max_new_tokens`` by."""
    if n_prompt == 0:
        raise ValueError("the prompt encodes to no tokens; give a non-empty prompt")
    if max_new_tokens >= block_size:  # no prompt could fit: say so, not "shorten it"
        raise ValueError(f"{new_tokens_setting}={max_new_tokens} leaves no room for a prompt in the model's "
                         f"context block_size={block_size}; allowed: {new_tokens_setting} <= {block_size - 1}")
    longest = block_size - 1 if max_new_tokens > 0 else block_size
    if n_prompt > longest:
        raise ValueError(f"prompt is {n_prompt} tokens, longer than the model's context allows "
                         f"(block_size={block_size}); shorten it to at most {longest} tokens")
    if n_prompt + max_new_tokens > block_size:
        raise ValueError(f"prompt ({n_prompt} tokens) + {new_tokens_setting}={max_new_tokens} exceeds the "
                         f"model's context block_size={block_size}; allowed: {new_tokens_setting} <= "
                         f"{block_size - n_prompt}")


def process_logits(logits: Tensor, history: Tensor, vocab_size: int, cfg: SamplingConfig) -> Tensor:
    """Next-token logits (V_padded,) -> the logits to argmax or sample from, as float32.

    history: (N,) ids already in the sequence (prompt included), for the penalty.
    """
    logits = logits.float().clone()
    # Rows beyond the tokenizer's vocabulary exist only for matmul-friendly shapes.
    logits[vocab_size:] = float("-inf")
    if cfg.repetition_penalty != 1.0:
        seen = torch.unique(history)
        scores = logits[seen]
        # CTRL: shrink positive logits and push negative ones further down.
        logits[seen] = torch.where(scores > 0, scores / cfg.repetition_penalty,
                                   scores * cfg.repetition_penalty)
    if cfg.greedy:
        return logits
    logits = logits / cfg.temperature
    if cfg.top_k:
        kth = torch.topk(logits, min(cfg.top_k, vocab_size)).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if cfg.top_p is not None and cfg.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        # Drop a token once the mass before it already reaches top_p; the top token always stays.
        drop = (cumulative - torch.softmax(sorted_logits, dim=-1)) >= cfg.top_p
        logits[order[drop]] = float("-inf")
    return logits


@torch.no_grad()
def generate(model: GPT, prompt_ids: list[int], vocab_size: int, cfg: SamplingConfig,
             eos_id: int | None = None) -> list[int]:
    """The new token ids after ``prompt_ids`` (at most ``cfg.max_new_tokens``)."""
    if vocab_size > model.config.padded_vocab_size:
        raise ValueError(f"tokenizer vocab_size={vocab_size} exceeds the model's embedding "
                         f"({model.config.padded_vocab_size} rows); the tokenizer does not belong "
                         f"to this model")
    check_fits_context(len(prompt_ids), cfg.max_new_tokens, model.config.block_size)
    device = model.wte.weight.device
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    seq = torch.tensor(prompt_ids, dtype=torch.long, device=device)
    caches = model.new_kv_caches(1, len(prompt_ids) + cfg.max_new_tokens) if cfg.use_kv_cache else None
    logits = model(seq[None], caches)[0, -1]  # (V_padded,)
    new: list[int] = []
    for _ in range(cfg.max_new_tokens):
        scores = process_logits(logits, seq, vocab_size, cfg)
        if cfg.greedy:
            token = scores.argmax()
        else:
            token = torch.multinomial(torch.softmax(scores, dim=-1), 1, generator=generator)[0]
        new.append(int(token))
        seq = torch.cat([seq, token.view(1)])
        if cfg.stop_at_eos and eos_id is not None and new[-1] == eos_id:
            break
        if len(new) == cfg.max_new_tokens:
            break
        # With the cache only the new token is fed; without it the whole sequence is recomputed.
        logits = (model(seq[-1:][None], caches) if caches else model(seq[None]))[0, -1]
    return new

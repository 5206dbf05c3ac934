"""Attention probabilities of a prompt, and the statistics that turn heatmaps into numbers.

Weights come from ``GPT.attention_probs`` (the explicit kernel computing the
variant's own description, the same reference the tests use), so the heatmaps show
what training computes, with the causal upper triangle at 0: softmax probabilities
for most variants; for the others, what each variant's docstring says (sigmoid
weights that need not sum to one; ``diff_attn``'s map difference per differential
head, which can be negative; ``talking_heads``' mixed weights).

Statistics, per layer and head, averaged over query positions i >= 1 (query 0
sees only itself, so every statistic there is trivially 1 or 0), with the definitions
of ``attnlab.analysis.head_scores`` for weights that are not a distribution:
- ``entropy``: -sum_j p_ij log p_ij in nats; ``entropy_norm`` divides by log(i+1),
  the entropy of uniform attention over the i+1 visible keys (1 = uniform, 0 = one key);
- ``distance``: sum_j p_ij (i - j), mean look-back in tokens;
  (for both, p_ij = |w_ij| / sum_j |w_ij|: softmax rows as they are; sigmoid, sink,
  mixed and differential rows each turned into a distribution by their absolute mass)
- ``sink``: w_i0, the weight on the first token (``<s>``; the "attention sink");
- ``diagonal``: w_ii, attention to the query's own position;
- ``punctuation``: weight on keys whose piece is punctuation (、 。 , . ...), NaN if the
  prompt has none before the query
  (these three on the weights as returned: signed, unnormalised).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from attnlab.analysis.head_scores import query_scores
from attnlab.data.tokenizer import Tokenizer
from attnlab.generate import check_fits_context
from attnlab.model import GPT

PUNCTUATION = frozenset("、。，．,.!?！？「」『』（）()・:;：；")
STATISTICS = ("entropy", "entropy_norm", "distance", "sink", "diagonal", "punctuation")
SPACE_MARK = "▁"  # sentencepiece's word-boundary marker
SPACE_LABEL = "␣"  # shown instead: IPAexGothic has no glyph for U+2581


@dataclass
class AttentionMaps:
    """One prompt through one model: its tokens and each layer's (H, T, T) probabilities."""

    variant: str
    seed: int
    prompt: str
    token_ids: list[int]
    pieces: list[str]  # sentencepiece pieces, e.g. "<s>", "▁the", "、", "<0xE3>"
    probs: list[np.ndarray]  # per layer, (H, T, T) float32, 0 above the diagonal (rows: see the module docstring)

    @property
    def labels(self) -> list[str]:
        """Tick labels: pieces with the word-boundary marker made visible, byte pieces named by
        the character they spell (``<0xE6><0xB5><0xB7>`` -> 海¹ 海² 海³)."""
        return token_labels(self.pieces)

    @property
    def n_layer(self) -> int:
        return len(self.probs)

    @property
    def n_head(self) -> int:
        return self.probs[0].shape[0]


_BYTE_PIECE = re.compile(r"<0x([0-9A-F]{2})>")
_BYTE_MARKS = "¹²³"  # the font has superscripts 1-3 only; 4-byte characters keep their pieces


def token_labels(pieces: Sequence[str]) -> list[str]:
    labels = [p.replace(SPACE_MARK, SPACE_LABEL) for p in pieces]
    i = 0
    while i < len(pieces):
        match = _BYTE_PIECE.fullmatch(pieces[i])
        if match is None:
            i += 1
            continue
        # The UTF-8 lead byte says how many bytes the character takes.
        lead = int(match.group(1), 16)
        width = 2 if lead >> 5 == 0b110 else 3 if lead >> 4 == 0b1110 else 0
        group = [_BYTE_PIECE.fullmatch(p) for p in pieces[i:i + width]]
        if width and len(group) == width and all(group):
            try:
                char = bytes(int(m.group(1), 16) for m in group).decode("utf-8")
            except UnicodeDecodeError:
                char = None
            if char is not None:
                labels[i:i + width] = [char + mark for mark in _BYTE_MARKS[:width]]
                i += width
                continue
        i += 1
    return labels


def attention_maps(model: GPT, tokenizer: Tokenizer, prompt: str, variant: str, seed: int) -> AttentionMaps:
    # Training documents start with <s>, so the prompt does too: the model sees what it learned on.
    ids = tokenizer.encode(prompt, bos=True)
    check_fits_context(len(ids), 0, model.config.block_size)
    device = model.wte.weight.device
    with torch.no_grad():
        layers = model.attention_probs(torch.tensor([ids], device=device))
    probs = [layer[0].float().cpu().numpy() for layer in layers]  # (H, T, T) each
    return AttentionMaps(variant, seed, prompt, ids, [tokenizer.id_to_piece(i) for i in ids], probs)


def is_punctuation(piece: str) -> bool:
    text = piece.replace(SPACE_MARK, "")
    return bool(text) and all(ch in PUNCTUATION for ch in text)


def head_statistics(probs: np.ndarray, pieces: Sequence[str]) -> dict[str, float]:
    """The statistics above for one head's (T, T) probabilities."""
    T = probs.shape[0]
    if T < 2:
        raise ValueError("attention statistics need a prompt of at least 2 tokens (with <s>)")
    p = probs[1:].astype(np.float64)  # queries 1..T-1
    query = np.arange(1, T)[:, None]
    key = np.arange(T)[None, :]
    visible = key <= query
    scores = query_scores(torch.from_numpy(np.asarray(probs)))
    punct_keys = np.array([is_punctuation(piece) for piece in pieces])
    has_punct = (punct_keys[None, :] & visible).any(axis=1)
    punct_mass = (p * punct_keys[None, :]).sum(axis=1)
    return {
        "entropy": float(scores["entropy"]),
        "entropy_norm": float(scores["entropy_norm"]),
        "distance": float(scores["distance"]),
        "sink": float(p[:, 0].mean()),
        "diagonal": float(p[np.arange(T - 1), np.arange(1, T)].mean()),
        "punctuation": float(punct_mass[has_punct].mean()) if has_punct.any() else float("nan"),
    }


def attention_statistics(maps: Iterable[AttentionMaps]) -> pd.DataFrame:
    """One row per (variant, seed, prompt, layer, head)."""
    rows = []
    for m in maps:
        for layer, probs in enumerate(m.probs):
            for head in range(probs.shape[0]):
                rows.append({"variant": m.variant, "seed": m.seed, "prompt": m.prompt, "layer": layer,
                             "head": head, **head_statistics(probs[head], m.pieces)})
    return pd.DataFrame(rows)


def summarize_statistics(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean over seeds and prompts per (variant, layer, head), with how many of each were averaged."""
    grouped = frame.groupby(["variant", "layer", "head"], sort=False)
    summary = grouped[list(STATISTICS)].mean()
    summary.insert(0, "prompts", grouped["prompt"].nunique())
    summary.insert(0, "seeds", grouped["seed"].nunique())
    return summary.reset_index()

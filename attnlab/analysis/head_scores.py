"""Per-head scores that tell attention variants apart: induction, previous token, sink, entropy, distance.

Pure functions over an attention-weights tensor ``w`` of shape (..., T, T) (query i on
the second-last axis, key j on the last, 0 above the diagonal), as ``GPT.attention_probs``
returns per layer (B, H', T, T). Every score is a mean over queries (and over the batch
and any leading axes but the head axis; see ``head_scores``).

What the weights are depends on the variant (its docstring in ``variants/``, and its
``weights_are_distributions``): softmax probabilities for most; ``attn_sink`` rows sum to
less than one (the rest is on the sink, which is no key); ``sigmoid_attn`` rows are
unnormalised sigmoid weights; ``talking_heads`` rows are mixed weights that need not sum
to one; ``diff_attn`` gives map1 - lambda * map2 per differential head (H' = n_head / 2),
whose entries can be negative. The scores are defined so that one formula serves all:

Position scores use the weights **as returned** (signed, unnormalised): they are the
coefficient with which that key's value enters the head's output.
- ``induction``: on a probe ``[<s>] + s + s`` (s a random segment of L distinct tokens,
  repeated once), the mean over the L queries t of the second copy of ``w[t, t - L + 1]``:
  the key just after the first occurrence of the query's token, i.e. what an induction
  head copies from. 1.0 for a perfect induction head (softmax), 0 for one that ignores it.
- ``prev_token``: mean over queries t >= 2 of ``w[t, t - 1]`` (from t = 2 on, so that the
  previous token is never the first one, which ``sink`` measures).
- ``sink``: mean over queries t >= 1 of ``w[t, 0]``, the weight on the first token
  (``<s>`` in every probe and prompt: the "attention sink").

Distribution scores first turn each row into a distribution by its total absolute mass,
``p[t, j] = |w[t, j]| / sum_j' |w[t, j']|``, so that unnormalised (sigmoid, talking heads),
sub-normalised (attn_sink) and signed (diff_attn, whose negative lobe counts as attention
paid) rows are read on one scale; for softmax rows p = w. Means over queries t >= 1 (query 0
sees only itself):
- ``entropy``: ``-sum_j p log p`` in nats (0 log 0 = 0); a uniform row over the t + 1
  visible keys gives log(t + 1);
- ``entropy_norm``: entropy / log(t + 1) (1 = uniform, 0 = one key);
- ``distance``: ``sum_j p[t, j] (t - j)``, the mean look-back in tokens.

Mass, so the normalisation above is never hidden: means over queries t >= 1 of
- ``row_mass``: ``sum_j w[t, j]`` as returned (1 for softmax; 1 - sink share for
  attn_sink; anything >= 0 for sigmoid; 1 - lambda for diff_attn);
- ``abs_mass``: ``sum_j |w[t, j]|`` (equal to row_mass unless some weights are negative).

Nothing here imports matplotlib or the rest of ``attnlab.analysis``: the training callback
``HeadScoresCallback`` computes the same scores at every validation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import pandas as pd
import torch
from torch import Tensor

from attnlab.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID

if TYPE_CHECKING:
    from attnlab.model import GPT

SCORES = ("induction", "prev_token", "sink", "entropy", "entropy_norm", "distance", "row_mass", "abs_mass")
SPECIAL_IDS = (UNK_ID, BOS_ID, EOS_ID, PAD_ID)


def _check(w: Tensor) -> Tensor:
    if w.ndim < 2 or w.shape[-1] != w.shape[-2]:
        raise ValueError(f"attention weights must be (..., T, T), got shape {tuple(w.shape)}")
    return w.double()


def row_mass(w: Tensor) -> Tensor:
    """sum_j w[t, j] per query: (..., T)."""
    return _check(w).sum(-1)


def abs_mass(w: Tensor) -> Tensor:
    """sum_j |w[t, j]| per query: (..., T)."""
    return _check(w).abs().sum(-1)


def normalised(w: Tensor) -> Tensor:
    """|w| / (the row's total |w|): each row a distribution over keys (a row of zeros stays 0)."""
    a = _check(w).abs()
    total = a.sum(-1, keepdim=True)
    return torch.where(total > 0, a / torch.where(total > 0, total, 1.0), 0.0)


def entropy(w: Tensor) -> Tensor:
    """Entropy in nats of each normalised row: (..., T)."""
    p = normalised(w)
    return -torch.where(p > 0, p * torch.log(torch.where(p > 0, p, 1.0)), 0.0).sum(-1)


def lookback_distance(w: Tensor) -> Tensor:
    """sum_j p[t, j] (t - j) of each normalised row, in tokens: (..., T)."""
    p = normalised(w)
    T = p.shape[-1]
    position = torch.arange(T, device=p.device)
    lag = (position[:, None] - position[None, :]).clamp(min=0).to(p)
    return (p * lag).sum(-1)


def key_weight(w: Tensor, lag: int) -> Tensor:
    """w[t, t - lag] for the queries t = lag .. T-1: (..., T - lag)."""
    w = _check(w)
    if not 0 <= lag < w.shape[-1]:
        raise ValueError(f"lag must be in [0, {w.shape[-1] - 1}] for T={w.shape[-1]}, got {lag}")
    return torch.diagonal(w, offset=-lag, dim1=-2, dim2=-1)


def _mean_from(values: Tensor, first: int) -> Tensor:
    """Mean over the last axis from index ``first`` on (NaN when nothing is left)."""
    rest = values[..., first:]
    if rest.shape[-1]:
        return rest.mean(-1)
    return torch.full(values.shape[:-1], math.nan, dtype=values.dtype, device=values.device)


def query_scores(w: Tensor, segment_len: int | None = None) -> dict[str, Tensor]:
    """Every score of ``SCORES`` for each row-set of ``w`` (..., T, T) -> (...,), averaged over
    the queries the module docstring names. ``segment_len`` L: the last 2L positions are a
    segment repeated twice (``repeated_random_tokens``); without it ``induction`` is NaN."""
    w = _check(w)
    T = w.shape[-1]
    if T < 2:
        raise ValueError("head scores need at least 2 positions (with <s>)")
    t = torch.arange(T, dtype=torch.float64, device=w.device)
    h = entropy(w)
    scores = {
        "prev_token": _mean_from(key_weight(w, 1), 1),  # key_weight(w, 1)[k] is query k + 1: from t = 2
        "sink": _mean_from(w[..., :, 0], 1),
        "entropy": _mean_from(h, 1),
        "entropy_norm": _mean_from(h[..., 1:] / torch.log(t[1:] + 1), 0),
        "distance": _mean_from(lookback_distance(w), 1),
        "row_mass": _mean_from(row_mass(w), 1),
        "abs_mass": _mean_from(abs_mass(w), 1),
    }
    if segment_len is None:
        scores["induction"] = torch.full(w.shape[:-2], math.nan, dtype=torch.float64, device=w.device)
    else:
        if segment_len < 2:
            raise ValueError(f"segment_len must be >= 2 (with 1 the induction key is the query itself), "
                             f"got {segment_len}")
        if 2 * segment_len > T:
            raise ValueError(f"segment_len={segment_len} repeated twice does not fit T={T} positions")
        # key_weight(w, L - 1)[k] belongs to query k + L - 1; the second copy is the last L queries.
        scores["induction"] = key_weight(w, segment_len - 1)[..., -segment_len:].mean(-1)
    return {name: scores[name] for name in SCORES}


def head_scores(weights: Tensor, segment_len: int | None = None) -> dict[str, Tensor]:
    """One layer's (B, H, T, T) weights -> each score per head (H,), mean over batch and queries."""
    if weights.ndim != 4:
        raise ValueError(f"expected one layer's (B, H, T, T) weights, got shape {tuple(weights.shape)}")
    return {name: value.mean(0) for name, value in query_scores(weights, segment_len).items()}


def probe_segment_len(requested: int, block_size: int, vocab_size: int,
                      exclude: Sequence[int] = SPECIAL_IDS) -> int:
    """The longest segment <= ``requested`` whose probe ``[<s>] + 2 segments`` fits ``block_size``
    and that ``vocab_size`` can fill with distinct non-special tokens; a ValueError below 2."""
    allowed = vocab_size - len({i for i in exclude if 0 <= i < vocab_size})
    length = min(requested, (block_size - 1) // 2, allowed)
    if length < 2:
        raise ValueError(f"no induction probe fits: segment of {length} tokens (requested {requested}, "
                         f"block_size={block_size}, {allowed} usable token ids); it needs >= 2")
    return length


def repeated_random_tokens(n_sequences: int, segment_len: int, vocab_size: int, seed: int = 0,
                           bos_id: int | None = BOS_ID, exclude: Sequence[int] = SPECIAL_IDS) -> Tensor:
    """(n_sequences, [1 +] 2 * segment_len) int64: ``<s>``, then a segment of distinct random
    token ids (none of ``exclude``, all < ``vocab_size``), then the same segment again.

    Drawn from a private generator seeded by ``seed``: the same probe on every call, and the
    global RNG (training's data order, initialisation) is not touched.
    """
    if n_sequences < 1 or segment_len < 1:
        raise ValueError(f"n_sequences and segment_len must be >= 1, got {n_sequences}, {segment_len}")
    excluded = set(exclude)
    allowed = torch.tensor([i for i in range(vocab_size) if i not in excluded], dtype=torch.long)
    if len(allowed) < segment_len:
        raise ValueError(f"a segment of {segment_len} distinct tokens needs {segment_len} usable ids; "
                         f"vocab_size={vocab_size} has {len(allowed)}")
    generator = torch.Generator().manual_seed(seed)
    segments = torch.stack([allowed[torch.randperm(len(allowed), generator=generator)[:segment_len]]
                            for _ in range(n_sequences)])
    parts = [segments, segments]
    if bos_id is not None:
        parts.insert(0, torch.full((n_sequences, 1), bos_id, dtype=torch.long))
    return torch.cat(parts, dim=1)


def model_head_scores(model: GPT, tokens: Tensor, segment_len: int | None = None) -> list[dict[str, Tensor]]:
    """Per layer, each score per head (H',) on CPU, for the probe ``tokens`` (B, T)."""
    device = model.wte.weight.device
    with torch.no_grad():
        layers = model.attention_probs(tokens.to(device))
    return [{name: value.cpu() for name, value in head_scores(w.float(), segment_len).items()}
            for w in layers]


# What training logs (as heads/<name>) and head_scores.md summarises, per run: name -> (score, over
# every layer and head take its ...).
SUMMARIES = {"induction_max": ("induction", "max"), "induction_mean": ("induction", "mean"),
             "prev_token_max": ("prev_token", "max"), "sink_mean": ("sink", "mean"),
             "entropy_norm_mean": ("entropy_norm", "mean")}


def summarize_heads(layers: Sequence[Mapping[str, Tensor]]) -> dict[str, float]:
    """``SUMMARIES`` over every layer and head of ``model_head_scores``' output."""
    return {name: float(getattr(torch.cat([layer[score].flatten() for layer in layers]), how)())
            for name, (score, how) in SUMMARIES.items()}


def head_scores_frame(model: GPT, variant: str, seed: int, vocab_size: int, n_sequences: int = 16,
                      segment_len: int = 32, probe_seed: int = 0, bos_id: int | None = BOS_ID,
                      exclude: Sequence[int] = SPECIAL_IDS) -> pd.DataFrame:
    """One row per layer and head: the scores on ``n_sequences`` repeated random segments
    (shortened to fit the model's block_size), with the probe's size and whether the variant's
    weights are distributions (``weights_are_distributions``)."""
    length = probe_segment_len(segment_len, model.config.block_size, vocab_size, exclude)
    tokens = repeated_random_tokens(n_sequences, length, vocab_size, probe_seed, bos_id, exclude)
    distributions = bool(type(model.blocks[0].attn).weights_are_distributions)
    rows = [{"variant": variant, "seed": seed, "layer": layer, "head": head, "heads": len(scores["induction"]),
             "segment_len": length, "sequences": n_sequences, "rows_sum_to_one": distributions,
             **{name: float(value[head]) for name, value in scores.items()}}
            for layer, scores in enumerate(model_head_scores(model, tokens, length))
            for head in range(len(scores["induction"]))]
    return pd.DataFrame(rows)


def summarize_head_scores(frame: pd.DataFrame) -> pd.DataFrame:
    """``SUMMARIES`` per run (variant, seed) of a ``head_scores_frame``-style frame."""
    grouped = frame.groupby(["variant", "seed"], sort=False)
    return grouped.agg(**{name: (score, how) for name, (score, how) in SUMMARIES.items()}).reset_index()

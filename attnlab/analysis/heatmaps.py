"""Attention heatmaps as in the study: query on the vertical axis, key on the horizontal.

Token strings are the tick labels; the causal upper triangle (probability 0 by
construction) is left blank rather than drawn as a colour, so it cannot be read
as "no attention". One colour scale (0..1) everywhere, so panels compare; weights with
negative entries (``diff_attn``'s difference of two maps) get a diverging scale
(-1..1, 0 white) instead, so a negative weight is never drawn as a small positive one.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from attnlab.analysis.maps import AttentionMaps
from attnlab.analysis.style import save_figure

CMAP = matplotlib.colormaps["viridis"].with_extremes(bad="white")  # "bad": the masked triangle
SIGNED_CMAP = matplotlib.colormaps["RdBu_r"].with_extremes(bad="lightgrey")


def _tick_fontsize(n_tokens: int) -> float:
    return float(np.clip(240 / max(n_tokens, 1), 4, 9))


def plot_attention(ax: Axes, probs: np.ndarray, labels: Sequence[str], title: str | None = None,
                   ylabels: bool = True):
    """Draw one head's (T, T) probabilities on ``ax``; returns the image (for a colour bar)."""
    T = probs.shape[0]
    upper = np.triu(np.ones((T, T), dtype=bool), k=1)
    signed = bool((probs < 0).any())
    image = ax.imshow(np.ma.masked_array(probs, mask=upper), cmap=SIGNED_CMAP if signed else CMAP,
                      vmin=-1.0 if signed else 0.0, vmax=1.0, interpolation="nearest")
    size = _tick_fontsize(T)
    ax.set_xticks(range(T), labels, rotation=90, fontsize=size)
    ax.set_yticks(range(T), labels if ylabels else [""] * T, fontsize=size)
    ax.set_xlabel("key")
    if ylabels:
        ax.set_ylabel("query")
    ax.grid(False)
    if title:
        ax.set_title(title, fontsize=10)
    return image


def heatmap_figure(maps: AttentionMaps, layer: int, head: int) -> Figure:
    T = len(maps.pieces)
    side = float(np.clip(T * 0.28 + 1.5, 4, 14))
    fig = Figure(figsize=(side + 1.0, side))
    ax = fig.add_subplot()
    image = plot_attention(ax, maps.probs[layer][head], maps.labels,
                           f"{maps.variant} (seed {maps.seed}) layer {layer} head {head}")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="attention probability")
    return fig


def variant_grid_figure(maps_by_variant: Sequence[AttentionMaps], layer: int) -> Figure:
    """The same layer of every variant side by side (columns), one row per head."""
    n_head = max(m.n_head for m in maps_by_variant)
    T = len(maps_by_variant[0].pieces)
    side = float(np.clip(T * 0.22 + 1.5, 3, 9))
    fig = Figure(figsize=(side * len(maps_by_variant) + 1.2, side * n_head), layout="constrained")
    axes = fig.subplots(n_head, len(maps_by_variant), squeeze=False)
    image = None
    for col, maps in enumerate(maps_by_variant):
        for head in range(n_head):
            ax = axes[head, col]
            if head >= maps.n_head:
                ax.set_visible(False)
                continue
            title = f"{maps.variant}" + (f" head {head}" if n_head > 1 else "")
            image = plot_attention(ax, maps.probs[layer][head], maps.labels, title, ylabels=col == 0)
    fig.colorbar(image, ax=axes, fraction=0.02, pad=0.01, label="attention probability")
    fig.suptitle(f"layer {layer}: {maps_by_variant[0].prompt}")
    return fig


def save_heatmaps(maps_by_variant: Sequence[AttentionMaps], out_dir: Path,
                  layers: Sequence[int] | None = None) -> list[Path]:
    """Every layer and head of every variant, plus one variant grid per layer.

    Layout: ``<variant>/layer<l>_head<h>.{png,pdf}`` and ``grid_layer<l>.{png,pdf}``.
    """
    n_layer = min(m.n_layer for m in maps_by_variant)
    chosen = list(range(n_layer)) if layers is None else list(layers)
    bad = [layer for layer in chosen if not 0 <= layer < n_layer]
    if bad:
        raise ValueError(f"heatmap layers {bad} do not exist; allowed: 0..{n_layer - 1}")
    paths = []
    for maps in maps_by_variant:
        for layer in chosen:
            for head in range(maps.n_head):
                paths += save_figure(heatmap_figure(maps, layer, head), out_dir / maps.variant,
                                     f"layer{layer}_head{head}")
    for layer in chosen:
        paths += save_figure(variant_grid_figure(maps_by_variant, layer), out_dir, f"grid_layer{layer}")
    return paths

"""Attention heatmaps as in the study: query on the vertical axis, key on the horizontal.

Token strings are the tick labels; the causal upper triangle (probability 0 by
construction) is left blank rather than drawn as a colour, so it cannot be read
as "no attention". One colour scale (0..1) everywhere, so panels compare; weights with
negative entries (``diff_attn``'s difference of two maps) get a diverging scale
(-1..1, 0 white) instead, so a negative weight is never drawn as a small positive one.

Difference maps (``save_difference_heatmaps``): each variant's weights minus the reference
variant's, on the same prompt and layer, on one diverging scale whose symmetric limits
(the largest |difference| of every panel of every layer drawn) are shared by all panels,
0 white. Heads are compared head by head where the two have the same number of heads;
otherwise (``diff_attn``'s n_head / 2 differential heads) the head-mean maps are compared,
and the panel's title says so. The weights are compared as returned (see
``attnlab.analysis.maps``): a sigmoid or sink variant's rows do not sum to one, and the
difference shows that too.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.image import AxesImage

from attnlab.analysis.maps import AttentionMaps
from attnlab.analysis.style import drawable, save_figure

CMAP = matplotlib.colormaps["viridis"].with_extremes(bad="white")  # "bad": the masked triangle
SIGNED_CMAP = matplotlib.colormaps["RdBu_r"].with_extremes(bad="lightgrey")


def _tick_fontsize(n_tokens: int) -> float:
    return float(np.clip(240 / max(n_tokens, 1), 4, 9))


def plot_attention(ax: Axes, probs: np.ndarray, labels: Sequence[str], title: str | None = None,
                   ylabels: bool = True, limit: float | None = None):
    """Draw one head's (T, T) probabilities on ``ax``; returns the image (for a colour bar).

    ``limit``: a diverging scale -limit..limit centred at 0 (difference maps), instead of
    0..1 (or -1..1 when some weight is negative)."""
    T = probs.shape[0]
    upper = np.triu(np.ones((T, T), dtype=bool), k=1)
    signed = limit is not None or bool((probs < 0).any())
    vmax = 1.0 if limit is None else limit
    image = ax.imshow(np.ma.masked_array(probs, mask=upper), cmap=SIGNED_CMAP if signed else CMAP,
                      vmin=-vmax if signed else 0.0, vmax=vmax, interpolation="nearest")
    size = _tick_fontsize(T)
    labels = [drawable(label) for label in labels]
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


MAX_COLUMNS = 5  # more variants than this wrap onto further rows, so a 14-variant grid stays readable


def _variant_grid(n_variants: int, rows_per_variant: int, n_tokens: int) -> tuple[Figure, np.ndarray]:
    """A figure and its axes indexed [variant, row]: variants fill at most ``MAX_COLUMNS``
    columns, then wrap, each variant's rows (heads) stacked in its column; unused slots hidden."""
    columns = min(n_variants, MAX_COLUMNS)
    bands = -(-n_variants // columns)
    side = float(np.clip(n_tokens * 0.22 + 1.5, 3, 9))
    fig = Figure(figsize=(side * columns + 1.2, side * rows_per_variant * bands), layout="constrained")
    grid = fig.subplots(bands * rows_per_variant, columns, squeeze=False)
    panels = np.empty((n_variants, rows_per_variant), dtype=object)
    for v in range(bands * columns):
        for row in range(rows_per_variant):
            ax = grid[(v // columns) * rows_per_variant + row, v % columns]
            if v < n_variants:
                panels[v, row] = ax
            else:
                ax.set_visible(False)
    return fig, panels


def variant_grid_figure(maps_by_variant: Sequence[AttentionMaps], layer: int) -> Figure:
    """The same layer of every variant side by side (columns, wrapping after ``MAX_COLUMNS``),
    one row per head."""
    n_head = max(m.n_head for m in maps_by_variant)
    T = len(maps_by_variant[0].pieces)
    fig, panels = _variant_grid(len(maps_by_variant), n_head, T)
    # One colour bar per scale drawn: probabilities 0..1, and -1..1 for signed weights (diff_attn,
    # talking_heads); a single bar would mislabel the panels drawn on the other scale.
    by_scale: dict[bool, AxesImage] = {}
    for v, maps in enumerate(maps_by_variant):
        for head in range(n_head):
            ax = panels[v, head]
            if head >= maps.n_head:
                ax.set_visible(False)
                continue
            title = f"{maps.variant}" + (f" head {head}" if n_head > 1 else "")
            image = plot_attention(ax, maps.probs[layer][head], maps.labels, title,
                                   ylabels=v % MAX_COLUMNS == 0)
            by_scale.setdefault(bool(image.get_clim()[0] < 0), image)
    drawn = [ax for ax in panels.flat if ax.get_visible()]
    for signed, image in sorted(by_scale.items()):
        fig.colorbar(image, ax=drawn, fraction=0.02, pad=0.01,
                     label="signed weight (diverging scale)" if signed else "attention probability")
    fig.suptitle(f"layer {layer}: {drawable(maps_by_variant[0].prompt)}")
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


def difference_maps(maps: AttentionMaps, reference: AttentionMaps, layer: int) -> tuple[list[np.ndarray], bool]:
    """``maps`` minus ``reference`` at ``layer``: one (T, T) map per head, or, when the head
    counts differ, one map of the head means (then the flag is True)."""
    if maps.token_ids != reference.token_ids:
        raise ValueError(f"{maps.variant} and {reference.variant} tokenise the prompt differently "
                         f"(different tokenizers); their maps cannot be subtracted")
    own, ref = maps.probs[layer].astype(np.float64), reference.probs[layer].astype(np.float64)
    if own.shape == ref.shape:
        return list(own - ref), False
    return [own.mean(0) - ref.mean(0)], True


def _difference_panels(maps_by_variant: Sequence[AttentionMaps], reference: AttentionMaps, layer: int
                       ) -> list[tuple[AttentionMaps, list[np.ndarray], bool]]:
    return [(m, *difference_maps(m, reference, layer)) for m in maps_by_variant if m is not reference]


def difference_figure(maps_by_variant: Sequence[AttentionMaps], reference: AttentionMaps, layer: int,
                      limit: float | None = None) -> Figure:
    """Every other variant minus ``reference`` at ``layer``: one column per variant (wrapping
    after ``MAX_COLUMNS``), one row per head (a single head-mean panel where the head counts
    differ), one diverging scale -limit..limit (default: the largest |difference| drawn here)."""
    columns = _difference_panels(maps_by_variant, reference, layer)
    if not columns:
        raise ValueError(f"no variant besides the reference {reference.variant!r} to compare")
    if limit is None:
        limit = max(float(np.abs(d).max()) for _, diffs, _ in columns for d in diffs)
    limit = limit or 1.0  # identical maps: any scale draws them white
    rows = max(len(diffs) for _, diffs, _ in columns)
    fig, panels = _variant_grid(len(columns), rows, len(reference.pieces))
    image = None
    for col, (maps, diffs, head_mean) in enumerate(columns):
        for row in range(rows):
            ax = panels[col, row]
            if row >= len(diffs):
                ax.set_visible(False)
                continue
            title = f"{maps.variant} − {reference.variant}"
            if head_mean:
                title += f"\nhead mean ({maps.n_head} vs {reference.n_head} heads)"
            elif rows > 1:
                title += f" head {row}"
            image = plot_attention(ax, diffs[row], reference.labels, title, ylabels=col % MAX_COLUMNS == 0,
                                   limit=limit)
    fig.colorbar(image, ax=[ax for ax in panels.flat if ax.get_visible()], fraction=0.02, pad=0.01,
                 label=f"weight difference (variant − {reference.variant})")
    fig.suptitle(f"layer {layer}: difference from {reference.variant} (seed {reference.seed}), "
                 f"scale ±{limit:.3g}: {drawable(reference.prompt)}")
    return fig


def save_difference_heatmaps(maps_by_variant: Sequence[AttentionMaps], reference: str, out_dir: Path,
                             layers: Sequence[int] | None = None) -> tuple[list[Path], list[str]]:
    """``diff_layer<l>.{png,pdf}`` per layer: every variant minus ``reference``, all layers on one
    shared scale. Returns the paths and what was left out, and why (no reference among the
    maps: nothing is drawn; a variant whose prompt tokens differ: that variant)."""
    by_name = {m.variant: m for m in maps_by_variant}
    if reference not in by_name:
        return [], [f"difference heatmaps: the reference variant {reference!r} has no attention maps "
                    f"(variants present: {', '.join(by_name) or 'none'}); none drawn"]
    ref = by_name[reference]
    left_out, comparable = [], [ref]
    for m in maps_by_variant:
        if m is ref:
            continue
        if m.token_ids != ref.token_ids:
            left_out.append(f"difference heatmaps: {m.variant} tokenises the prompt differently from "
                            f"{reference} (another tokenizer); left out")
        else:
            comparable.append(m)
    if len(comparable) < 2:
        return [], left_out + [f"difference heatmaps: no variant besides {reference!r} to compare; none drawn"]
    n_layer = min(m.n_layer for m in comparable)
    chosen = list(range(n_layer)) if layers is None else [layer for layer in layers if 0 <= layer < n_layer]
    limit = max((float(np.abs(d).max()) for layer in chosen
                 for _, diffs, _ in _difference_panels(comparable, ref, layer) for d in diffs), default=0.0)
    paths = []
    for layer in chosen:
        paths += save_figure(difference_figure(comparable, ref, layer, limit), out_dir, f"diff_layer{layer}")
    return paths, left_out

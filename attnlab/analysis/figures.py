"""Paper figures from finished runs: loss curves, final-loss bars, throughput, head scores.

Bands and error bars are the same Student-t 95% intervals over seeds as in the
tables (``attnlab.analysis.stats.mean_ci``); with one seed there is no band and
the legend says n=1.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from attnlab.analysis.stats import mean_ci
from attnlab.analysis.style import variant_colors
from attnlab.runs import RunDir


def validation_curves(runs: Sequence[RunDir]) -> pd.DataFrame:
    """Long frame (variant, seed, step, tokens, val_loss) from each run's metrics.csv."""
    return logged_curves(runs, "val/loss", "val_loss")


def logged_curves(runs: Sequence[RunDir], column: str, name: str) -> pd.DataFrame:
    """Long frame (variant, seed, step, tokens, <name>) of one logged ``column`` of each
    run's metrics.csv (runs that never logged it are left out).

    Validation rows (``val/loss``, the ``heads/`` scores) carry no token count of their
    own; tokens grow linearly with the step (fixed batch), so they are placed on the line
    through the logged ``train/tokens_seen`` points with the run's tokens per step.
    """
    frames = []
    for run in runs:
        metrics = run.load_metrics()
        if column not in metrics:
            continue
        summary = run.load_summary()
        tokens_per_step = summary["tokens_seen"] / max(summary["steps"], 1)
        logged = metrics.dropna(subset=["train/tokens_seen"]) if "train/tokens_seen" in metrics else None
        if logged is not None and len(logged):
            step0, tokens0 = logged["step"].iloc[0], logged["train/tokens_seen"].iloc[0]
        else:  # Lightning's CSV step is the optimizer step - 1
            step0, tokens0 = 0, tokens_per_step
        rows = metrics.dropna(subset=[column])
        frames.append(pd.DataFrame({
            "variant": run.variant, "seed": run.seed, "step": rows["step"].to_numpy(),
            "tokens": tokens0 + (rows["step"].to_numpy() - step0) * tokens_per_step,
            name: rows[column].to_numpy()}))
    if not frames:
        return pd.DataFrame(columns=["variant", "seed", "step", "tokens", name])
    return pd.concat(frames, ignore_index=True)


LEGEND_INSIDE_MAX = 6  # more entries than this cover the data: the legend moves outside, right


def _legend(fig: Figure, ax: Axes, **kwargs) -> None:
    handles, labels = ax.get_legend_handles_labels()
    if len(labels) > LEGEND_INSIDE_MAX:
        width, height = fig.get_size_inches()
        fig.set_size_inches(width + 2.0, height)  # room for the legend, the plot keeps its width
        fig.legend(handles, labels, loc="outside right upper", fontsize=8)
    else:
        ax.legend(**kwargs)


def band_figure(frame: pd.DataFrame, variants: Sequence[str], x: str, y: str, xlabel: str, ylabel: str,
                title: str, confidence: float = 0.95) -> Figure:
    """One line per variant: the mean of ``y`` over seeds at each ``x``, with a confidence band
    (where every point has >= 2 seeds)."""
    colors = variant_colors(variants)
    fig = Figure(figsize=(6.4, 4.0), layout="constrained")
    ax = fig.add_subplot()
    for variant in variants:
        group = frame[frame["variant"] == variant]
        if group.empty:
            continue
        points = [(at, mean_ci(g[y], confidence)) for at, g in group.groupby(x)]
        xs = np.array([at for at, _ in points])
        mean = np.array([i.mean for _, i in points])
        n = group["seed"].nunique()
        ax.plot(xs, mean, color=colors[variant], label=f"{variant} (n={n})", marker="." if len(xs) < 20 else None)
        if all(i.half_width is not None for _, i in points):
            ax.fill_between(xs, [i.low for _, i in points], [i.high for _, i in points],
                            color=colors[variant], alpha=0.2, linewidth=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    _legend(fig, ax)
    return fig


def loss_curve_figure(curves: pd.DataFrame, variants: Sequence[str], confidence: float = 0.95) -> Figure:
    """Validation loss against tokens seen: mean over seeds with a confidence band."""
    return band_figure(curves, variants, "tokens", "val_loss", "tokens seen", "validation loss",
                       f"validation loss (mean over seeds, band: {confidence:.0%} CI)", confidence)


def induction_curve_figure(curves: pd.DataFrame, variants: Sequence[str], confidence: float = 0.95) -> Figure:
    """The strongest head's induction score (``heads/induction_max``, logged at every validation
    by ``HeadScoresCallback``) against tokens seen: mean over seeds with a confidence band."""
    return band_figure(curves, variants, "tokens", "induction_max", "tokens seen",
                       "induction score, strongest head",
                       f"induction score vs tokens seen (mean over seeds, band: {confidence:.0%} CI)", confidence)


def loss_by_position_figure(losses: pd.DataFrame, variants: Sequence[str], confidence: float = 0.95) -> Figure:
    """Mean validation cross-entropy at each position of the window (columns variant, seed,
    position, loss): how much each variant gains from context."""
    return band_figure(losses, variants, "position", "loss", "position t in the window (predicted from t + 1 tokens)",
                       "validation loss (nats)",
                       f"loss by token position (mean over seeds, band: {confidence:.0%} CI)", confidence)


HEAD_SCORE_PANELS = (("induction", "induction score"), ("prev_token", "previous-token score"),
                     ("sink", "first-token (sink) weight"))


def head_scores_figure(scores: pd.DataFrame, variants: Sequence[str]) -> Figure:
    """Per score a panel: x the layer (variants side by side), one dot per head, its mean over
    seeds (columns variant, seed, layer, head and the scores of ``attnlab.analysis.head_scores``)."""
    colors = variant_colors(variants)
    means = scores.groupby(["variant", "layer", "head"], sort=False)[[s for s, _ in HEAD_SCORE_PANELS]].mean()
    fig = Figure(figsize=(4.2 * len(HEAD_SCORE_PANELS), 3.8), layout="constrained")
    axes = fig.subplots(1, len(HEAD_SCORE_PANELS), squeeze=False)[0]
    present = [v for v in variants if v in means.index.get_level_values("variant")]
    width = 0.8 / max(len(present), 1)
    for ax, (score, label) in zip(axes, HEAD_SCORE_PANELS):
        for k, variant in enumerate(present):
            rows = means.loc[variant].reset_index()
            ax.scatter(rows["layer"] - 0.4 + width * (k + 0.5), rows[score], color=colors[variant], s=14,
                       label=variant)
        layers = sorted(scores["layer"].unique())
        ax.set_xticks(layers, [str(layer) for layer in layers])
        ax.set_xlabel("layer")
        ax.set_title(label)
    axes[0].set_ylabel("mean over probe queries (and seeds)")
    _legend(fig, axes[0], fontsize=8)
    fig.suptitle("head scores on repeated random tokens (one dot per head)")
    return fig


def _bar_figure(runs: pd.DataFrame, variants: Sequence[str], column: str, ylabel: str, title: str,
                confidence: float, zoom: bool) -> Figure:
    colors = variant_colors(variants)
    intervals = [mean_ci(runs.loc[runs["variant"] == v, column], confidence) for v in variants]
    fig = Figure(figsize=(1.3 * len(variants) + 2.0, 3.8), layout="constrained")
    ax = fig.add_subplot()
    x = np.arange(len(variants))
    errors = [i.half_width or 0.0 for i in intervals]
    ax.bar(x, [i.mean for i in intervals], yerr=errors, capsize=4,
           color=[colors[v] for v in variants], alpha=0.85)
    for xi, v in zip(x, variants):  # every seed as a dot, so n and spread are visible
        values = runs.loc[runs["variant"] == v, column]
        ax.scatter(np.full(len(values), xi), values, color="black", s=10, zorder=3)
    ax.set_xticks(x, [f"{v}\n(n={i.n})" for v, i in zip(variants, intervals)])
    if zoom:  # losses differ in the second decimal: a zero-based axis would hide that
        lows = [i.mean - e for i, e in zip(intervals, errors)] + list(runs[column].dropna())
        highs = [i.mean + e for i, e in zip(intervals, errors)] + list(runs[column].dropna())
        pad = 0.15 * (max(highs) - min(lows) or 1.0)
        ax.set_ylim(min(lows) - pad, max(highs) + pad)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="x", visible=False)
    return fig


def final_loss_figure(runs: pd.DataFrame, variants: Sequence[str], confidence: float = 0.95,
                      column: str = "final_val_loss") -> Figure:
    """Bars: mean final validation loss per variant, error bars: the confidence interval."""
    return _bar_figure(runs, variants, column, "final validation loss",
                       f"final validation loss (error bars: {confidence:.0%} CI; dots: seeds)",
                       confidence, zoom=True)


def throughput_figure(runs: pd.DataFrame, variants: Sequence[str], confidence: float = 0.95) -> Figure:
    devices = ", ".join(sorted(runs["device"].dropna().unique()))
    return _bar_figure(runs, variants, "tokens_per_s", "training tokens / s",
                       f"throughput ({devices})", confidence, zoom=False)

"""Paper figures from finished runs: loss curves, final-loss bars and throughput.

Bands and error bars are the same Student-t 95% intervals over seeds as in the
tables (``attnlab.analysis.stats.mean_ci``); with one seed there is no band and
the legend says n=1.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from attnlab.analysis.stats import mean_ci
from attnlab.analysis.style import variant_colors
from attnlab.runs import RunDir


def validation_curves(runs: Sequence[RunDir]) -> pd.DataFrame:
    """Long frame (variant, seed, step, tokens, val_loss) from each run's metrics.csv.

    Validation rows carry no token count of their own; tokens grow linearly with
    the step (fixed batch), so they are placed on the line through the logged
    ``train/tokens_seen`` points with the run's tokens per step.
    """
    frames = []
    for run in runs:
        metrics = run.load_metrics()
        summary = run.load_summary()
        if "val/loss" not in metrics:
            continue
        tokens_per_step = summary["tokens_seen"] / max(summary["steps"], 1)
        logged = metrics.dropna(subset=["train/tokens_seen"]) if "train/tokens_seen" in metrics else None
        if logged is not None and len(logged):
            step0, tokens0 = logged["step"].iloc[0], logged["train/tokens_seen"].iloc[0]
        else:  # Lightning's CSV step is the optimizer step - 1
            step0, tokens0 = 0, tokens_per_step
        val = metrics.dropna(subset=["val/loss"])
        frames.append(pd.DataFrame({
            "variant": run.variant, "seed": run.seed, "step": val["step"].to_numpy(),
            "tokens": tokens0 + (val["step"].to_numpy() - step0) * tokens_per_step,
            "val_loss": val["val/loss"].to_numpy()}))
    if not frames:
        return pd.DataFrame(columns=["variant", "seed", "step", "tokens", "val_loss"])
    return pd.concat(frames, ignore_index=True)


def loss_curve_figure(curves: pd.DataFrame, variants: Sequence[str], confidence: float = 0.95) -> Figure:
    """Validation loss against tokens seen: mean over seeds with a confidence band."""
    colors = variant_colors(variants)
    fig = Figure(figsize=(6.4, 4.0), layout="constrained")
    ax = fig.add_subplot()
    for variant in variants:
        group = curves[curves["variant"] == variant]
        if group.empty:
            continue
        points = [(tokens, mean_ci(g["val_loss"], confidence)) for tokens, g in group.groupby("tokens")]
        x = np.array([t for t, _ in points])
        mean = np.array([i.mean for _, i in points])
        n = group["seed"].nunique()
        ax.plot(x, mean, color=colors[variant], label=f"{variant} (n={n})", marker="." if len(x) < 20 else None)
        if all(i.half_width is not None for _, i in points):
            ax.fill_between(x, [i.low for _, i in points], [i.high for _, i in points],
                            color=colors[variant], alpha=0.2, linewidth=0)
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("validation loss")
    ax.set_title(f"validation loss (mean over seeds, band: {confidence:.0%} CI)")
    ax.legend()
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

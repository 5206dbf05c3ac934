"""Scaling ladders: how a ladder's runs are named and found, and how its learning rates are chosen.

A ladder ``<name>`` is a family of ordinary experiments, one per rung (model preset) and
learning rate, ``<name>-<preset>-lr<lr>``; each is readable on its own by ``evaluate.py``.
The learning rate of each (variant, rung) is chosen on the runs at the ladder's selection
seeds (the lowest mean final validation loss over them); the comparison is reported on other
seeds, so no reported number chose its own rate. Both training (``ladder.lr=tuned``) and the
ladder's evaluation read the choice from here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from attnlab.runs import RunDir, find_runs


def member_name(ladder: str, preset: str, lr: float) -> str:
    """The experiment of one rung and learning rate, e.g. ``ladder-ladder_c2-lr0.002``."""
    return f"{ladder}-{preset}-lr{lr:g}"


def ladder_runs(results_dir: str | Path, ladder: str) -> list[RunDir]:
    """Finished runs of every member experiment of ``ladder``."""
    return [run for run in find_runs(results_dir) if run.path.parent.parent.name.startswith(f"{ladder}-")]


def ladder_frame(runs: Sequence[RunDir]) -> pd.DataFrame:
    """One row per run: variant, rung (preset), lr, seed, parameters, training compute, loss."""
    rows = []
    for run in runs:
        summary = run.load_summary()
        params = summary["parameters"]
        rows.append({"variant": summary["variant"], "rung": summary["preset"], "lr": float(summary["lr"]),
                     "seed": int(summary["seed"]), "parameters": params["total"],
                     "non_embedding_parameters": params["total"] - params["embedding"] - params["head"],
                     "flops_per_token": summary["flops_per_token"], "tokens_seen": summary["tokens_seen"],
                     "compute": summary["flops_per_token"] * summary["tokens_seen"],
                     "loss": summary["final_val_loss"], "matched": summary.get("params_matched"),
                     "run_dir": str(run.path)})
    return pd.DataFrame(rows)


def select_learning_rates(frame: pd.DataFrame, selection_seeds: Sequence[int]) -> pd.DataFrame:
    """Per (variant, rung): the learning rate with the lowest mean final validation loss over the
    selection seeds' runs, the rates tried, and whether the choice lies at the grid's edge
    (then a wider grid might do better: the tables say so)."""
    selection = frame[frame["seed"].isin(list(selection_seeds))]
    rows = []
    for (variant, rung), group in selection.groupby(["variant", "rung"], sort=False):
        by_lr = group.groupby("lr")["loss"].agg(["mean", "count"]).sort_index()
        by_lr = by_lr[by_lr["mean"].map(math.isfinite)]
        if by_lr.empty:
            continue
        best = by_lr["mean"].idxmin()
        grid = list(by_lr.index)
        rows.append({"variant": variant, "rung": rung, "lr": best, "selection_loss": by_lr.loc[best, "mean"],
                     "selection_runs": int(by_lr.loc[best, "count"]),
                     "grid": ", ".join(f"{lr:g}" for lr in grid),
                     "at_edge": len(grid) > 1 and best in (grid[0], grid[-1])})
    return pd.DataFrame(rows, columns=["variant", "rung", "lr", "selection_loss", "selection_runs", "grid",
                                       "at_edge"])


def tuned_lr(results_dir: str | Path, ladder: str, variant: str, rung: str, selection_seeds: Sequence[int]) -> float:
    """The chosen learning rate of one (variant, rung), or an error naming the tuning command."""
    runs = ladder_runs(results_dir, ladder)
    chosen = select_learning_rates(ladder_frame(runs), selection_seeds) if runs else pd.DataFrame()
    row = chosen[(chosen["variant"] == variant) & (chosen["rung"] == rung)] if len(chosen) else chosen
    if row.empty:
        raise ValueError(f"ladder.lr=tuned: no finished run of ladder {ladder!r} for variant {variant!r} at "
                         f"rung {rung!r} with a selection seed ({', '.join(map(str, selection_seeds))}) under "
                         f"{results_dir}; tune first, e.g. python train.py -m experiment={ladder}_tune")
    return float(row["lr"].iloc[0])

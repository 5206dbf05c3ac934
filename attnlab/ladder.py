"""Scaling ladders: how a ladder's runs are named and found, and how its learning rates are chosen.

A ladder ``<name>`` is a family of ordinary experiments, one per rung (model preset) and
learning rate, ``<name>-<preset>-lr<lr>``; each is readable on its own by ``evaluate.py``.
The learning rate of each (variant, rung) is chosen on the runs at the ladder's selection
seeds (the lowest mean final validation loss over them); the comparison is reported on other
seeds, so no reported number chose its own rate. Both training (``ladder.lr=tuned``) and the
ladder's evaluation read the choice from here. A choice at the lowest or highest rate tried is
not known to be the best: ``ladder.lr=lower``/``higher`` runs (``widened_lr``) try one step
beyond it, until every choice lies inside its grid or next to a rate that diverged.

The runs of one (variant, rung) must share every setting but the rate and the seed
(``check_one_setting``): a ladder retrained with changed settings into the same results
directory would otherwise be pooled with the old runs.
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
                     # None: the run diverged (a tuning run records that rather than failing)
                     "loss": math.nan if summary["final_val_loss"] is None else summary["final_val_loss"],
                     "matched": summary.get("params_matched"),
                     "run_dir": str(run.path)})
    return pd.DataFrame(rows)


def select_learning_rates(frame: pd.DataFrame, selection_seeds: Sequence[int]) -> pd.DataFrame:
    """Per (variant, rung): the learning rate with the lowest mean final validation loss over the
    selection seeds' runs, and the rates tried. A rate whose runs diverged (a non-finite loss, on
    any selection seed) is never chosen but counts as tried: a choice next to it is bounded on that
    side. At the edge: the choice is the lowest or highest rate tried (a wider grid might do better)."""
    selection = frame[frame["seed"].isin(list(selection_seeds))]
    rows = []
    for (variant, rung), group in selection.groupby(["variant", "rung"], sort=False):
        # mean() would pass over a seed's NaN: a rate that diverged on one seed would be ranked on the others'
        by_lr = group.groupby("lr")["loss"].agg(["mean", "size", "count"]).sort_index()
        finite = by_lr[by_lr["mean"].map(math.isfinite) & (by_lr["count"] == by_lr["size"])]
        if finite.empty:
            continue
        best = finite["mean"].idxmin()
        tried = list(by_lr.index)
        rows.append({"variant": variant, "rung": rung, "lr": best, "selection_loss": finite.loc[best, "mean"],
                     "selection_runs": int(finite.loc[best, "size"]),
                     "grid": ", ".join(f"{lr:g}" + ("" if lr in finite.index else " (diverged)") for lr in tried),
                     "lowest_tried": tried[0], "highest_tried": tried[-1],
                     "at_edge": best in (tried[0], tried[-1])})
    return pd.DataFrame(rows, columns=["variant", "rung", "lr", "selection_loss", "selection_runs", "grid",
                                       "lowest_tried", "highest_tried", "at_edge"])


def _checked_frame(results_dir: str | Path, ladder: str) -> pd.DataFrame:
    runs = ladder_runs(results_dir, ladder)
    check_one_setting(runs)
    return ladder_frame(runs) if runs else pd.DataFrame(columns=["variant", "rung", "lr", "seed", "loss"])


def complete_rates(frame: pd.DataFrame, selection_seeds: Sequence[int]) -> pd.DataFrame:
    """The selection seeds' runs at rates that have run on every selection seed: a rate still
    being tried on another seed does not decide a widening yet."""
    selection = frame[frame["seed"].isin(list(selection_seeds))]
    seeds = selection.groupby(["variant", "rung", "lr"])["seed"].transform("nunique")
    return selection[seeds == len(set(selection_seeds))]


def _choice(frame: pd.DataFrame, variant: str, rung: str, selection_seeds: Sequence[int], setting: str,
            ladder: str, results_dir: str | Path) -> pd.Series:
    """The selection row of one (variant, rung), or an error saying why there is none."""
    cell = frame[(frame["variant"] == variant) & (frame["rung"] == rung) & frame["seed"].isin(list(selection_seeds))]
    chosen = select_learning_rates(cell, selection_seeds)
    if not chosen.empty:
        return chosen.iloc[0]
    if cell.empty:
        raise ValueError(f"{setting}: no finished run of ladder {ladder!r} for variant {variant!r} at rung "
                         f"{rung!r} with a selection seed ({', '.join(map(str, selection_seeds))}) under "
                         f"{results_dir}; tune first, e.g. python train.py -m experiment={ladder}_tune")
    raise ValueError(f"{setting}: every rate tried for {variant!r} at rung {rung!r} diverged "
                     f"({', '.join(f'{lr:g}' for lr in sorted(cell['lr'].unique()))}); tune lower rates, e.g. "
                     f"python train.py -m experiment={ladder}_tune optim.lr=<lower rates>")


def tuned_lr(results_dir: str | Path, ladder: str, variant: str, rung: str, selection_seeds: Sequence[int]) -> float:
    """The chosen learning rate of one (variant, rung), or an error naming the tuning command."""
    frame = _checked_frame(results_dir, ladder)
    return float(_choice(frame, variant, rung, selection_seeds, "ladder.lr=tuned", ladder, results_dir)["lr"])


def widened_lr(results_dir: str | Path, ladder: str, variant: str, rung: str, selection_seeds: Sequence[int],
               direction: str, factor: float, seed: int) -> tuple[float | None, str]:
    """``direction`` "lower" or "higher": the rate one ``factor`` beyond the grid of one (variant,
    rung) when its choice is the lowest (highest) rate tried, else None; and why, in words.
    Decided on the rates every selection seed has run (``complete_rates``); None too when this
    ``seed`` has already run the rate to try (the other selection seeds have not yet)."""
    frame = _checked_frame(results_dir, ladder)
    row = _choice(complete_rates(frame, selection_seeds), variant, rung, selection_seeds, f"ladder.lr={direction}",
                  ladder, results_dir)
    side = "lowest" if direction == "lower" else "highest"
    edge = float(row["lowest_tried"] if direction == "lower" else row["highest_tried"])
    where = f"ladder.lr={direction}: {variant} at {rung} chose {row['lr']:g} of {row['grid']}"
    if float(row["lr"]) != edge:
        return None, f"{where}, not its {side} rate: nothing to train"
    # Rounded as the run's name writes it, so a name never stands for two rates.
    rate = float(f"{edge / factor if direction == 'lower' else edge * factor:.6g}")
    ran = frame[(frame["variant"] == variant) & (frame["rung"] == rung) & (frame["lr"] == rate)]
    if seed in set(ran["seed"]):
        return None, f"{where}, its {side}: {rate:g} has run at seed {seed}, not yet at every selection seed"
    return rate, f"{where}, its {side}: trying {rate:g}"


def widening(results_dir: str | Path, ladder: str, selection_seeds: Sequence[int],
             variants: Sequence[str] | None = None, rungs: Sequence[str] | None = None) -> tuple[int, int, int]:
    """(variant, rung) choices in all, and how many lie at the lowest and at the highest rate tried,
    as ``widened_lr`` decides them; of ``variants`` and ``rungs`` only, where given (a sweep's)."""
    chosen = select_learning_rates(complete_rates(_checked_frame(results_dir, ladder), selection_seeds),
                                   selection_seeds)
    if variants is not None:
        chosen = chosen[chosen["variant"].isin(variants)]
    if rungs is not None:
        chosen = chosen[chosen["rung"].isin(rungs)]
    return (len(chosen), int((chosen["lr"] == chosen["lowest_tried"]).sum()),
            int((chosen["lr"] == chosen["highest_tried"]).sum()))


# The settings that define what a (variant, rung) of a ladder is; all but the rate and the seed.
_DEFINING = {"resolved_model": None, "budget": None, "optim": {"lr"},
             "trainer": {"batch_size", "seq_len", "accumulate_grad_batches", "max_steps", "precision", "val_batches"},
             "data": {"source", "paths", "text_field", "hf_name", "hf_config", "hf_split", "hf_revision",
                      "val_fraction", "split_seed", "tokenizer"}}


def _defining_settings(config: dict) -> dict[str, object]:
    flat: dict[str, object] = {}
    for section, keys in _DEFINING.items():
        values = config.get(section) or {}
        for key, value in values.items():
            keep = key not in keys if section == "optim" else keys is None or key in keys
            if keep:
                flat[f"{section}.{key}"] = value
    return flat


def check_one_setting(runs: Sequence[RunDir], new: tuple[str, str, dict, Path] | None = None) -> None:
    """Refuse runs of one (variant, rung) that differ in anything but the learning rate and the seed
    (variant options, budget, data, batch shape, optimiser), and runs of one rung whose variants
    differ in anything but the model (budget, data, batch shape, optimiser but the rate), naming the
    setting and two runs.
    ``new``: (variant, rung, resolved config, run directory) of a run about to train, checked
    against the finished ones before it spends any compute."""
    first: dict[tuple[str, str], tuple[Path, dict]] = {}
    first_at_rung: dict[str, tuple[str, Path, dict]] = {}
    members = [(run.variant, str(run.load_summary()["preset"]), run.load_config(), run.path) for run in runs]
    for variant, rung, config, path in [*members, *([new] if new else [])]:
        settings = _defining_settings(config)
        other, expected = first.setdefault((variant, rung), (path, settings))
        for name in sorted(set(settings) | set(expected)):
            if settings.get(name) != expected.get(name):
                raise ValueError(
                    f"ladder runs of {variant} at {rung} differ in {name}: {expected.get(name)!r} in {other}, "
                    f"{settings.get(name)!r} in {path}; a ladder compares one setting per variant and rung: "
                    f"train a changed ladder into a fresh results_dir=, or move the old runs")
        # The variants of a rung share everything but their attention (the model's resolution): the same
        # budget, steps, batches, data and optimiser, or they are not compared at equal tokens.
        shared = {k: v for k, v in settings.items() if not k.startswith("resolved_model.")}
        other_variant, other, expected = first_at_rung.setdefault(rung, (variant, path, shared))
        for name in sorted(set(shared) | set(expected)):
            if shared.get(name) != expected.get(name):
                raise ValueError(
                    f"ladder runs at {rung} differ between variants in {name}: {expected.get(name)!r} for "
                    f"{other_variant} in {other}, {shared.get(name)!r} for {variant} in {path}; the variants of "
                    f"a rung are trained alike but for their attention: train {variant} with the same {name}, "
                    f"or a changed ladder into a fresh results_dir=")

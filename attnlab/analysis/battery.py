"""``python evaluate.py experiment=<battery>``: the synthetic battery's accuracies, per task and overall.

    results/<battery>/
        tables/    cells      per (task, cell, variant): the task's settings, chance, accuracy over seeds,
                              and whether the cell is informative
                   per_task   per (task, variant): accuracy averaged over the task's informative cells, 95%
                              interval over seeds, the paired difference against the reference (Holm over
                              every (variant, task))
                   overall    per variant: the mean of its task scores, the paired difference (Holm over variants)
                   per_run.csv  every run: variant, task, cell, seed, accuracy, chance, the task's settings
                   ladder_agreement   where a ladder (``ladder=``, default ``ladder``) has runs, or else a
                              ladder's evaluation directory exists (``ladder_result=``, default
                              reference/ladder): Spearman between the overall score and the ladder's
                              top-rung compute multiplier (attnlab/analysis/agreement.py)
        figures/   accuracy_heatmap (variants x tasks), accuracy_vs_difficulty (one panel per task) (.png .pdf)
        evaluation.json       the runs used and where they were read from (``source``), the cells left
                              out and why, the rule

``battery_result=<dir>`` evaluates a battery again from its evaluation directory (per_run.csv), without
its runs: e.g. a committed result against a newer ladder.

A battery ``<name>`` is a family of experiments ``<name>-<task>-<cell>`` (configs/experiment/battery.yaml),
one per task and difficulty cell. Everything is read from the runs' summary.json: ``final_val_acc``
and ``data.task`` (the task, its settings, its chance accuracy), so the difficulty of a cell is the
settings that differ between the task's cells, not its name.

A cell is uninformative when every variant's mean accuracy is at chance (at most ``CHANCE_FACTOR`` x the
cell's chance accuracy) or every variant's is solved (at least ``SOLVED``): it ranks nothing, and is in
the ``cells`` table only.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from attnlab.analysis.agreement import agreement_table, battery_ladder_agreement
from attnlab.analysis.config import DEFAULT_LADDER_RESULT, EvaluateConfig
from attnlab.analysis.ladder import is_ladder, ladder_comparison, ladder_result_comparison
from attnlab.analysis.outputs import prepare_outputs, redone_by_family
from attnlab.analysis.stats import compare, holm, mean_ci
from attnlab.analysis.style import save_figure, variant_colors
from attnlab.analysis.tables import (SETUP_KEYS, Table, check_reference_variant, read_evaluation_dir, setup_notes,
                                     variant_order)
from attnlab.runs import RunDir, find_runs

log = logging.getLogger(__name__)

CHANCE_FACTOR = 1.5  # at chance: mean accuracy <= 1.5 x chance
SOLVED = 0.99  # solved: mean accuracy >= 0.99
RULE = (f"A cell is uninformative when every variant's mean accuracy over seeds is at chance (<= {CHANCE_FACTOR:g} x "
        f"the cell's chance accuracy) or every variant's is solved (>= {SOLVED:g}); such cells are left out of "
        f"every average and test.")


UNVALIDATED = " run(s) without final_val_acc (never validated), left out: "


def battery_runs(runs_dir: str | Path, name: str) -> list[RunDir]:
    """Finished runs of the member experiments ``<name>-...`` that are synthetic tasks."""
    return [run for run in find_runs(runs_dir) if run.path.parent.parent.name.startswith(f"{name}-")
            and run.load_summary().get("data", {}).get("task")]


def is_battery(runs_dir: str | Path, name: str) -> bool:
    """Whether ``name`` is a battery (member experiments ``<name>-<task>-<cell>`` of synthetic tasks)."""
    return not (Path(runs_dir) / name).is_dir() and bool(battery_runs(runs_dir, name))


def battery_frame(runs: Sequence[RunDir], name: str) -> pd.DataFrame:
    """One row per run: variant, task, cell, seed, accuracy, chance, the task's settings."""
    rows = []
    for run in runs:
        summary = run.load_summary()
        if summary.get("final_val_acc") is None:  # never validated: evaluate_battery names it
            continue
        task = dict(summary["data"]["task"])
        experiment = run.path.parent.parent.name
        prefix = f"{name}-{task['task']}-"
        cell = experiment[len(prefix):] if experiment.startswith(prefix) else experiment[len(name) + 1:]
        rows.append({"variant": summary["variant"], "task": task.pop("task"), "cell": cell,
                     "seed": int(summary["seed"]), "acc": float(summary["final_val_acc"]),
                     "chance": float(task.pop("chance_acc")), "settings": task, "run_dir": str(run.path),
                     **{key: summary.get(key) for key in SETUP_KEYS}})
    return pd.DataFrame(rows)


def difficulty_keys(frame: pd.DataFrame) -> dict[str, list[str]]:
    """Per task: the settings that differ between its cells (the grid's knobs), in name order, so
    that runs and a result read back (whose settings are stored sorted) name them alike."""
    keys = {}
    for task, group in frame.groupby("task", sort=False):
        settings = pd.DataFrame(list(group["settings"]))
        keys[task] = sorted(k for k in settings.columns if settings[k].astype(str).nunique() > 1)
    return keys


def cell_status(means: pd.Series, chance: float) -> str:
    """``informative``, ``at chance`` or ``solved``, from the variants' mean accuracies in one cell."""
    if (means <= CHANCE_FACTOR * chance).all():
        return "at chance"
    if (means >= SOLVED).all():
        return "solved"
    return "informative"


def cells_table(frame: pd.DataFrame, variants: list[str], keys: dict[str, list[str]],
                confidence: float) -> Table:
    rows = []
    for (task, cell), group in frame.groupby(["task", "cell"], sort=True):
        chance = float(group["chance"].iloc[0])
        status = cell_status(group.groupby("variant")["acc"].mean(), chance)
        settings = group["settings"].iloc[0]
        difficulty = ", ".join(f"{k}={settings[k]}" for k in keys[task]) or cell
        for variant in variants:
            at = group[group["variant"] == variant]
            if at.empty:
                continue
            interval = mean_ci(at["acc"], confidence)
            rows.append({"task": task, "cell": cell, "difficulty": difficulty, "variant": variant,
                         "n": interval.n, "chance": chance, "acc": interval.mean,
                         "acc_half_width": interval.half_width, "status": status})
    numbers = pd.DataFrame(rows)
    display = pd.DataFrame({
        "task": numbers["task"], "cell": numbers["cell"], "difficulty": numbers["difficulty"],
        "variant": numbers["variant"], "n": numbers["n"], "chance": numbers["chance"].map(lambda v: f"{v:.3f}"),
        "final val acc": [_fmt_interval(m, h) for m, h in zip(numbers["acc"], numbers["acc_half_width"])],
        "status": numbers["status"]})
    return Table("cells", numbers, display, [RULE])


def seed_scores(frame: pd.DataFrame, cells: list[str]) -> tuple[pd.Series, int]:
    """One variant on one task: per seed, the mean accuracy over ``cells`` (seeds missing a cell are
    dropped; their count is returned)."""
    pivot = frame[frame["cell"].isin(cells)].pivot_table(index="seed", columns="cell", values="acc")
    pivot = pivot.reindex(columns=cells)
    complete = pivot.dropna()
    return complete.mean(axis=1), len(pivot) - len(complete)


def variant_note(frame: pd.DataFrame, cells: list[str]) -> str:
    """Why a task's grid says nothing about this variant, or ''. Each cell is held to its own chance
    (a task's cells may differ in it: a larger vocabulary of values)."""
    if not cells:
        return "no informative cell"
    at = frame[frame["cell"].isin(cells)].groupby("cell")
    means, chance = at["acc"].mean(), at["chance"].first()
    if (means <= CHANCE_FACTOR * chance).all():
        return "at chance in every informative cell"
    if (means >= SOLVED).all():
        return "solved in every informative cell"
    return ""


def per_task_table(frame: pd.DataFrame, statuses: pd.DataFrame, reference: str, variants: list[str],
                   cfg: EvaluateConfig, notes: list[str]) -> tuple[Table, dict[tuple[str, str], pd.Series]]:
    rows, comparisons, scores = [], [], {}
    for task in sorted(frame["task"].unique()):
        at = frame[frame["task"] == task]
        task_cells = statuses[statuses["task"] == task]
        cells = sorted(task_cells.loc[task_cells["status"] == "informative", "cell"])
        # The chance of the score: the mean of its cells' chances, as the score is of their accuracies.
        cell_chance = at.groupby("cell")["chance"].first()
        chance = float(cell_chance[cells].mean() if cells else cell_chance.mean())
        left_out = task_cells[task_cells["status"] != "informative"]
        if len(left_out):
            notes.append(f"{task}: cell(s) " + ", ".join(f"{c} ({s})" for c, s in
                                                          zip(left_out["cell"], left_out["status"]))
                         + " uninformative, left out.")
        for variant in variants:
            runs = at[at["variant"] == variant]
            if runs.empty:
                continue
            per_seed, dropped = seed_scores(runs, cells) if cells else (pd.Series(dtype=float), 0)
            if dropped:
                notes.append(f"{task}/{variant}: {dropped} seed(s) without a run in every informative cell, "
                             f"left out.")
            scores[(variant, task)] = per_seed
            row = {"task": task, "variant": variant, "n": len(per_seed), "cells": len(cells), "chance": chance,
                   **_measure("acc", per_seed, None if variant == reference else scores.get((reference, task)), cfg),
                   "note": variant_note(runs, cells)}
            if "p" in row:
                comparisons.append(len(rows))
            rows.append(row)
    numbers = _with_holm(pd.DataFrame(rows), comparisons)
    display = pd.DataFrame({
        "task": numbers["task"], "variant": numbers["variant"], "n": numbers["n"], "cells": numbers["cells"],
        "chance": numbers["chance"].map(lambda v: f"{v:.3f}"),
        "final val acc (95% CI)": [_fmt_interval(m, h) for m, h in zip(numbers["acc"], numbers["acc_half_width"])],
        **_difference_columns(numbers, reference), "note": numbers["note"]})
    explain = [f"final val acc: per seed, the mean over the task's informative cells; then the mean and its "
               f"{cfg.confidence:.0%} t interval over seeds; chance: the mean of those cells' chances. "
               f"Δ: variant − {reference}, paired by seed, Holm-adjusted over every (variant, task). {RULE}"]
    return Table("per_task", numbers, display, explain + notes), scores


def overall_table(scores: dict[tuple[str, str], pd.Series], reference: str, variants: list[str],
                  cfg: EvaluateConfig, notes: list[str]) -> tuple[Table, dict[str, pd.Series]]:
    tasks = sorted({t for (_, t), s in scores.items() if len(s)})
    # Tasks every variant has a score on, so each overall score averages the same tasks.
    shared = [t for t in tasks if all(len(scores.get((v, t), ())) for v in variants)]
    per_seed = {v: pd.concat([scores[(v, t)] for t in shared], axis=1).dropna().mean(axis=1) if shared
                else pd.Series(dtype=float) for v in variants}
    rows, comparisons = [], []
    for variant in variants:
        row = {"variant": variant, "tasks": len(shared), "n": len(per_seed[variant]),
               **_measure("score", per_seed[variant], None if variant == reference else per_seed.get(reference), cfg)}
        if "p" in row:
            comparisons.append(len(rows))
        rows.append(row)
    numbers = _with_holm(pd.DataFrame(rows), comparisons)
    display = pd.DataFrame({
        "variant": numbers["variant"], "tasks": numbers["tasks"], "n": numbers["n"],
        "score (95% CI)": [_fmt_interval(m, h) for m, h in zip(numbers["score"], numbers["score_half_width"])],
        **_difference_columns(numbers, reference)})
    explain = [f"score: per seed, the mean of the per-task accuracies over the task(s) every variant has an "
               f"informative cell in ({', '.join(shared) or 'none'}); Δ: variant − {reference}, paired by seed, "
               f"Holm-adjusted over the variants."]
    left = sorted(set(tasks) - set(shared))
    if left:
        explain.append(f"Left out of the overall score (a variant has no score there): {', '.join(left)}.")
    return Table("overall", numbers, display, explain + notes), per_seed


def ladder_agreement_table(cfg: EvaluateConfig, per_seed: dict[str, pd.Series],
                           task_scores: dict[tuple[str, str], pd.Series]) -> tuple[list[Table], dict]:
    """Spearman between the overall score and the ladder's top-rung multiplier, where the ladder
    ``cfg.ladder`` has runs, else from the ladder result ``cfg.ladder_result`` where that directory
    exists (attnlab/analysis/agreement.py), and the same for each task's score on its own
    (``task_scores``: (variant, task) -> per-seed score); else no table and why."""
    runs_dir = cfg.ladder_runs_dir or cfg.runs_dir
    if cfg.ladder is not None and is_ladder(runs_dir, cfg.ladder):
        ladder, source = ladder_comparison(runs_dir, cfg.ladder, cfg), f"ladder {cfg.ladder!r}'s runs under {runs_dir}"
    elif cfg.ladder_result is not None and Path(cfg.ladder_result).is_dir():
        named = cfg.ladder is not None and (cfg.ladder != "ladder" or cfg.ladder_runs_dir is not None)
        if named and cfg.ladder_result == DEFAULT_LADDER_RESULT:
            # a ladder named on purpose: a misspelt name or directory must not pass the committed one for it
            log.warning("no runs of ladder %r under %s: the battery is compared with the ladder result %s "
                        "instead", cfg.ladder, runs_dir, cfg.ladder_result)
        ladder, source = ladder_result_comparison(cfg.ladder_result, cfg)[0], f"the ladder result {cfg.ladder_result}"
    else:
        return [], {"reason": f"no ladder {cfg.ladder!r} under {runs_dir} and no ladder result "
                              f"{cfg.ladder_result!r}"}
    scaling = ladder.scaling
    if scaling is None:
        return [], {"reason": ladder.fit_problem, "ladder_source": source}
    result = battery_ladder_agreement(per_seed, scaling) | {"ladder_source": source}
    if "reason" in result:
        return [], result
    numbers = agreement_table(result)
    display = pd.DataFrame({
        "variant": numbers["variant"], "battery score": numbers["battery_score"].map(lambda v: f"{v:.4f}"),
        "battery rank": numbers["battery_rank"].map(lambda v: f"{v:g}"),
        f"multiplier at {scaling.multipliers['rung'].iloc[-1] if len(scaling.multipliers) else 'top rung'}":
            numbers["top_rung_multiplier"].map(lambda v: f"{v:.3g}"),
        "ladder rank": numbers["ladder_rank"].map(lambda v: f"{v:g}")})
    explain = [f"Spearman's rho between the battery's overall score and the compute multiplier of {source} "
               f"at its largest rung ({cfg.baseline} = 1), over {len(numbers)} variants: "
               f"{result['rho']:+.3f}, {result['confidence']:.0%} bootstrap interval over seeds "
               f"[{result['rho_low']:+.3f}, {result['rho_high']:+.3f}] ({result['resamples']} resamples). With "
               f"{len(numbers)} variants rho takes few values: read the interval, not the point."]
    if result["without_multiplier"]:
        explain.append(f"Not ranked, with a battery score but no multiplier in {source} (not on the ladder, or "
                       f"its fit failed there): {', '.join(result['without_multiplier'])}.")
    per_task = per_task_agreement_table(result, task_scores, scaling, source)
    result["per_task"] = per_task.numbers.to_dict("records")
    return [Table("ladder_agreement", numbers, display, explain), per_task], result


def per_task_agreement_table(overall: dict, task_scores: dict[tuple[str, str], pd.Series],
                             scaling, source: str) -> Table:
    """Does any single task rank the variants as the ladder does? rho for the overall score, then
    for each task's score alone, over the variants the overall agreement uses."""
    rows = [{"score": "overall", **_rho_columns(overall)}]
    for task in sorted({t for _, t in task_scores}):
        scores = {v: task_scores[(v, task)] for v in overall["variants"] if len(task_scores.get((v, task), ()))}
        result = (battery_ladder_agreement(scores, scaling) if scores
                  else {"reason": "no informative cell (as in per_task)"})
        rows.append({"score": task, **_rho_columns(result), "variants": len(scores)})
    numbers = pd.DataFrame(rows)
    display = pd.DataFrame({
        "score": numbers["score"], "variants": numbers["variants"],
        "rho (interval over seeds)": [
            why if why else f"{rho:+.3f} [{low:+.3f}, {high:+.3f}]" if not math.isnan(rho) else
            "undefined (every variant scores the same)"
            for rho, low, high, why in zip(numbers["rho"], numbers["rho_low"], numbers["rho_high"],
                                           numbers["reason"])]})
    explain = [f"Spearman's rho between each score and the compute multiplier of {source} at its largest rung, "
               f"with its {overall['confidence']:.0%} bootstrap interval over seeds, as in ladder_agreement; the "
               f"overall score first, then each task's own (the mean over its informative cells). With "
               f"{len(overall['variants'])} variants, one rho in several tables is expected to look strong by "
               f"chance: a task that agrees here is a hypothesis for more variants, not a finding."]
    return Table("ladder_agreement_per_task", numbers, display, explain)


def _rho_columns(result: dict) -> dict:
    return {"variants": len(result.get("variants", ())), "rho": result.get("rho", math.nan),
            "rho_low": result.get("rho_low", math.nan), "rho_high": result.get("rho_high", math.nan),
            "resamples": result.get("resamples", 0), "reason": result.get("reason", "")}


def _measure(name: str, per_seed: pd.Series, reference: pd.Series | None, cfg: EvaluateConfig) -> dict:
    """``name`` and its half width over seeds; with ``reference`` (seed -> value), the paired difference."""
    interval = mean_ci(per_seed, cfg.confidence) if len(per_seed) else None
    row = {name: interval.mean if interval else None, f"{name}_half_width": interval.half_width if interval else None}
    if reference is not None and len(reference) and len(per_seed):
        c = compare(per_seed.to_dict(), reference.to_dict(), cfg.confidence, cfg.alpha, cfg.power,
                    cfg.bootstrap_resamples, cfg.bootstrap_seed)
        row.update(difference=c.difference, difference_low=c.low, difference_high=c.high, p=c.p_value)
    return row


def _with_holm(numbers: pd.DataFrame, comparisons: list[int]) -> pd.DataFrame:
    numbers["p_holm"] = None
    for i, p in zip(comparisons, holm([numbers.loc[i, "p"] for i in comparisons])):
        numbers.loc[i, "p_holm"] = p
    return numbers


def _fmt_interval(mean, half_width) -> str:
    if mean is None or pd.isna(mean):
        return ""
    return f"{mean:.4f}" + ("" if half_width is None or pd.isna(half_width) else f" ± {half_width:.4f}")


def _difference_columns(numbers: pd.DataFrame, reference: str) -> dict[str, list[str]]:
    empty = [None] * len(numbers)
    differences = [
        "reference" if v == reference else
        "" if d is None or pd.isna(d) else
        f"{d:+.4f}" + ("" if lo is None or pd.isna(lo) else f" [{lo:+.4f}, {hi:+.4f}]")
        for v, d, lo, hi in zip(numbers["variant"], numbers.get("difference", empty),
                                numbers.get("difference_low", empty), numbers.get("difference_high", empty))]
    p_holm = ["" if p is None or pd.isna(p) else f"{p:.3g}" for p in numbers["p_holm"]]
    return {f"Δ vs {reference} (95% CI)": differences, "p (Holm)": p_holm}


def heatmap_figure(per_task: pd.DataFrame, variants: list[str]):
    grid = per_task.pivot_table(index="variant", columns="task", values="acc").reindex(index=variants)
    fig, ax = plt.subplots(figsize=(1.2 * max(len(grid.columns), 3) + 2, 0.45 * len(variants) + 1.5))
    sns.heatmap(grid.astype(float), annot=True, fmt=".2f", vmin=0, vmax=1, cmap="viridis", ax=ax,
                cbar_kws={"label": "final val acc (informative cells)"})
    ax.set_xlabel("task")
    ax.set_ylabel("variant")
    ax.set_title("mean accuracy over each task's informative cells")
    return fig


def difficulty_figure(cells: pd.DataFrame, frame: pd.DataFrame, keys: dict[str, list[str]], variants: list[str]):
    tasks = sorted(cells["task"].unique())
    colors = variant_colors(variants)
    columns = min(3, len(tasks))
    rows = math.ceil(len(tasks) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns + 1.6, 3.2 * rows), squeeze=False,
                             layout="constrained")
    for ax, task in zip(axes.flat, tasks):
        at = cells[cells["task"] == task]
        knob = keys[task][0] if len(keys[task]) == 1 else None
        settings = frame[frame["task"] == task].drop_duplicates("cell").set_index("cell")["settings"]
        order = sorted(at["cell"].unique(), key=lambda c: _sort_key(settings[c].get(knob) if knob else c))
        x = {c: (settings[c][knob] if knob and _numeric(settings[c][knob]) else i) for i, c in enumerate(order)}
        for variant in variants:
            v = at[at["variant"] == variant].set_index("cell").reindex(order).dropna(subset=["acc"])
            ax.errorbar([x[c] for c in v.index], v["acc"], yerr=v["acc_half_width"].fillna(0).astype(float),
                        marker="o", capsize=3, color=colors[variant], label=variant)
        chance = at.drop_duplicates("cell").set_index("cell").reindex(order)["chance"].astype(float)
        if chance.nunique() == 1:
            ax.axhline(float(chance.iloc[0]), color="grey", linewidth=0.8, linestyle="--")
        else:  # each cell's own chance (e.g. more values to recall), at its difficulty
            ax.plot([x[c] for c in order], chance, color="grey", linewidth=0.8, linestyle="--", marker="_")
        if knob and all(_numeric(settings[c][knob]) for c in order):
            if min(x.values()) > 0 and max(x.values()) / min(x.values()) >= 8:
                ax.set_xscale("log")
            ax.set_xticks(sorted(x.values()), [f"{v:g}" for v in sorted(x.values())])  # the grid's values
            ax.minorticks_off()
            ax.set_xlabel(knob)
        else:
            ax.set_xticks(list(x.values()), order)
            ax.set_xlabel("cell")
        ax.set_ylim(0, 1.02)
        ax.set_ylabel("final val acc")
        ax.set_title(task, fontsize=10)
    for ax in list(axes.flat)[len(tasks):]:
        ax.set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right center", fontsize=8)
    fig.suptitle("final val acc per cell: mean and 95% interval over seeds; chance dashed", fontsize=10)
    return fig


def _numeric(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _sort_key(value):
    return (0, value, "") if _numeric(value) else (1, 0, str(value))


def evaluate_battery(cfg: EvaluateConfig, name: str) -> Path:
    runs = battery_runs(cfg.runs_dir, name)
    if not runs:
        raise ValueError(f"no finished run of battery {name!r} under {cfg.runs_dir}; train it first, e.g. "
                         f"python train.py -m experiment={name}")
    frame = battery_frame(runs, name)
    unvalidated = sorted(set(map(str, (r.path for r in runs))) - set(frame["run_dir"] if len(frame) else ()))
    if len(frame) == 0:
        raise ValueError(f"no run of battery {name!r} under {cfg.runs_dir} has a final_val_acc (none was "
                         f"validated: trainer.val_every_n_steps <= trainer.max_steps)")
    notes: list[str] = []
    if unvalidated:
        notes.append(f"{len(unvalidated)}{UNVALIDATED}" + ", ".join(unvalidated) + ".")
    return write_battery_evaluation(cfg, name, frame, notes, cfg.output_path(name),
                                    source=f"the runs under {cfg.runs_dir}")


def battery_result_frame(result_dir: str | Path) -> tuple[pd.DataFrame, str, list[str]]:
    """``battery_frame``'s rows, the battery's name and its note on unvalidated runs, read back
    from a battery's evaluation directory (``tables/per_run.csv`` and ``evaluation.json``, as
    ``evaluate_battery`` writes them, e.g. a committed reference result) instead of its runs."""
    per_run, meta = read_evaluation_dir(result_dir, "battery_result", "battery", ("battery",))
    text = {"variant": str, "task": str, "cell": str, "settings": str, "run_dir": str}
    frame = pd.read_csv(per_run, dtype=text, keep_default_na=False)  # a cell named "NA" stays a name
    absent = sorted({*text, "seed", "acc", "chance"} - set(frame.columns))
    if absent:
        raise ValueError(f"battery_result={str(result_dir)!r}: its tables/per_run.csv has no column "
                         f"{', '.join(absent)} (python evaluate.py experiment=<battery> writes them all)")
    # A setting a run did not record is an empty cell here: unknown, as in the runs, not a value "".
    setup = [key for key in SETUP_KEYS if key in frame]
    frame[setup] = frame[setup].replace("", np.nan)
    # The note on runs never validated is the one per_run.csv cannot give again; the rest are redone.
    notes = [note for note in meta.get("notes", []) if UNVALIDATED in note]
    return frame.assign(settings=frame["settings"].map(json.loads)), meta["battery"], notes


def evaluate_battery_result(cfg: EvaluateConfig) -> Path:
    """The battery evaluated again from ``cfg.battery_result`` (its per-run accuracies), e.g. to
    compare a committed battery with a newer ladder without training it again."""
    frame, name, notes = battery_result_frame(cfg.battery_result)
    out = cfg.output_path_reading("battery_result", "battery", name)
    return write_battery_evaluation(cfg, name, frame, notes, out, source=f"the battery result {cfg.battery_result}")


def write_battery_evaluation(cfg: EvaluateConfig, name: str, frame: pd.DataFrame, notes: list[str], out: Path,
                             source: str) -> Path:
    """Tables, figures and evaluation.json of the battery ``name`` from its per-run rows."""
    check_reference_variant(cfg.baseline, frame["variant"])  # before the directory is made
    out.mkdir(parents=True, exist_ok=True)
    before = prepare_outputs(out)
    variants = variant_order(frame["variant"].unique(), cfg.baseline)
    notes = list(notes)
    if cfg.baseline not in variants:
        notes.append(f"No run of the reference variant {cfg.baseline!r}: no differences are reported.")
    # One cell's runs are compared with each other: trained otherwise (a rerun at another lr), they say so.
    for (task, cell), group in frame.groupby(["task", "cell"], sort=True):
        for note in setup_notes(group, where=f"{task}/{cell}: "):
            log.warning(note)
            notes.append(note)
    keys = difficulty_keys(frame)
    cells = cells_table(frame, variants, keys, cfg.confidence)
    statuses = cells.numbers.drop_duplicates(["task", "cell"])[["task", "cell", "status"]]
    per_task, scores = per_task_table(frame, statuses, cfg.baseline, variants, cfg, notes)
    overall, per_seed = overall_table(scores, cfg.baseline, variants, cfg, [])
    agreement, agreement_result = ladder_agreement_table(cfg, per_seed, scores)
    for table in (cells, per_task, overall, *agreement):
        table.write(out / "tables")
    # Every run's number, the one the tables average: a committed result can be re-read without its runs.
    per_run = frame.assign(settings=frame["settings"].map(lambda s: json.dumps(s, sort_keys=True)))
    per_run.sort_values(["task", "cell", "variant", "seed"]).to_csv(out / "tables" / "per_run.csv", index=False)
    if "figures" in cfg.outputs:
        save_figure(heatmap_figure(per_task.numbers, variants), out / "figures", "accuracy_heatmap")
        save_figure(difficulty_figure(cells.numbers, frame, keys, variants), out / "figures", "accuracy_vs_difficulty")
    (out / "evaluation.json").write_text(json.dumps(_no_nan({
        "battery": name, "source": source, "reference": cfg.baseline, "rule": RULE,
        "chance_factor": CHANCE_FACTOR, "solved": SOLVED, "difficulty_keys": keys, "runs": sorted(frame["run_dir"]),
        "uninformative_cells": [f"{t}/{c} ({s})" for t, c, s in statuses.itertuples(index=False)
                                if s != "informative"],
        "notes": notes, "ladder_agreement": agreement_result,
        "outputs": before.finish(redone=redone_by_family(cfg.outputs))}),
        indent=2, default=_json_default), encoding="utf-8")
    return out


def _no_nan(value):
    """``value`` with every NaN as None: JSON has no NaN (Python would write a bare ``NaN``)."""
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_no_nan(v) for v in value]
    if isinstance(value, (float, np.floating)) and math.isnan(value):
        return None
    return value


def _json_default(value):
    return value.item() if isinstance(value, np.generic) else str(value)

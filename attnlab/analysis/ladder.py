"""``python evaluate.py experiment=<ladder>``: a scaling ladder's answer in compute.

    results/<ladder>/
        tables/    lr_selection     the learning rate each (variant, rung) was compared at, and its grid
                   per_rung         per rung: loss, the paired difference at equal parameters (Holm over
                                    every (variant, rung)), the difference at equal FLOPs, the multiplier;
                                    a rate chosen at its grid's edge is marked (edge)
                   fits             L(C) = E + A C^-alpha per variant, bootstrap intervals over seeds
                   multipliers      compute multiplier per (variant, rung) with its trend over scale
                   per_run.csv      every run (selection seeds too): rung, variant, lr, seed, compute, loss
        figures/   loss_vs_compute, multiplier (.png .pdf)
        evaluation.json             the runs used, the notes, the files written (attnlab/analysis/outputs.py)

Runs at the ladder's selection seeds chose the learning rates (attnlab/ladder.py) and are in
``lr_selection`` only; every other table uses the other seeds' runs at the chosen rate.
Compute is training FLOPs, ``attnlab.flops.flops_per_token`` (attention and variant terms
included) times the tokens seen. ``ladder_again=<dir>`` evaluates a ladder again from its
evaluation directory's ``per_run.csv``, without its runs (a committed reference result).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import NamedTuple

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from attnlab.analysis.config import EvaluateConfig
from attnlab.analysis.outputs import prepare_outputs, redone_by_family
from attnlab.analysis.scaling import FitError, ScalingComparison, scaling_comparison
from attnlab.analysis.stats import compare, holm, mean_ci
from attnlab.analysis.style import save_figure, variant_colors
from attnlab.analysis.tables import Table, check_reference_variant, read_evaluation_dir, variant_order
from attnlab.ladder import check_one_setting, ladder_frame, ladder_runs, select_learning_rates

log = logging.getLogger(__name__)


def is_ladder(runs_dir: str | Path, name: str) -> bool:
    """Whether ``name`` is a ladder (member experiments ``<name>-...``) rather than one experiment."""
    return not (Path(runs_dir) / name).is_dir() and bool(ladder_runs(runs_dir, name))


def selection_seeds(runs) -> list[int]:
    """The selection seeds the ladder's runs were configured with (``ladder.selection_seeds``)."""
    seeds = set()
    for run in runs:
        seeds.update(run.load_config().get("ladder", {}).get("selection_seeds") or [])
    return sorted(seeds)


def comparison_runs(frame: pd.DataFrame, chosen: pd.DataFrame, seeds: list[int]) -> tuple[pd.DataFrame, list[str]]:
    """The runs the comparison reports: other seeds than the selection's, at the chosen rate."""
    rates = {(r.variant, r.rung): r.lr for r in chosen.itertuples()}
    others = frame[~frame["seed"].isin(seeds)]
    keep = others.apply(lambda r: rates.get((r["variant"], r["rung"])) == r["lr"], axis=1).astype(bool)
    notes = []
    if (~keep).any():
        notes.append(f"{int((~keep).sum())} run(s) outside the selection seeds were not at their (variant, rung)'s "
                     f"chosen rate and are left out.")
    return others[keep].copy(), notes


def rung_order(frame: pd.DataFrame) -> list[str]:
    return list(frame.groupby("rung")["compute"].mean().sort_values().index)


def per_rung_table(runs: pd.DataFrame, scaling: ScalingComparison | None, reference: str, variants: list[str],
                   cfg: EvaluateConfig, chosen: pd.DataFrame, notes: list[str]) -> Table:
    rates = {(r.variant, r.rung): r.lr for r in chosen.itertuples()}
    edges = {(r.variant, r.rung): bool(r.at_edge) for r in chosen.itertuples()}
    multipliers = ({(r.variant, r.rung): r for r in scaling.multipliers.itertuples()} if scaling else {})
    rows, comparisons, unequal = [], [], []
    for rung in rung_order(runs):
        at = runs[runs["rung"] == rung]
        ref = dict(zip(at.loc[at["variant"] == reference, "seed"], at.loc[at["variant"] == reference, "loss"]))
        for variant in variants:
            cell = at[at["variant"] == variant]
            if cell.empty:
                continue
            if ref and set(cell["seed"]) != set(ref):  # an interrupted sweep: means over other seeds
                unequal.append(f"{variant} at {rung}: seeds {sorted(map(int, cell['seed']))} "
                               f"({reference}: {sorted(map(int, ref))})")
            interval = mean_ci(cell["loss"], cfg.confidence)
            row = {"rung": rung, "variant": variant, "lr": rates.get((variant, rung)),
                   "lr_at_edge": edges.get((variant, rung), False), "n": len(cell),
                   "parameters": int(cell["parameters"].iloc[0]), "compute": float(cell["compute"].mean()),
                   "loss": interval.mean, "loss_half_width": interval.half_width}
            if variant != reference and len(ref) > 0:
                c = compare(dict(zip(cell["seed"], cell["loss"])), ref, cfg.confidence, cfg.alpha, cfg.power,
                            cfg.bootstrap_resamples, cfg.bootstrap_seed)
                row.update(difference=c.difference, difference_low=c.low, difference_high=c.high, p=c.p_value)
                comparisons.append(len(rows))
            m = multipliers.get((variant, rung))
            if m is not None:
                row.update(loss_difference_equal_flops=m.loss_difference, multiplier=m.multiplier,
                           multiplier_low=m.multiplier_low, multiplier_high=m.multiplier_high)
            rows.append(row)
    numbers = pd.DataFrame(rows)
    if comparisons:  # Holm over every (variant, rung) pair at once
        adjusted = holm([rows[i].get("p") for i in comparisons])
        numbers["p_holm"] = None
        for i, p in zip(comparisons, adjusted):
            numbers.loc[i, "p_holm"] = p

    def fmt(v, spec):
        return "" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)

    display = pd.DataFrame({
        "rung": numbers["rung"], "variant": numbers["variant"],
        "lr": [fmt(v, "g") + (" (edge)" if edge else "") for v, edge in zip(numbers["lr"], numbers["lr_at_edge"])],
        "n": numbers["n"], "parameters": numbers["parameters"].map(lambda v: f"{v:,}"),
        "compute (PFLOP)": numbers["compute"].map(lambda v: f"{v / 1e15:.4g}"),
        "final val loss": [f"{m:.4f}" + (f" ± {h:.4f}" if h is not None and not math.isnan(h) else "")
                           for m, h in zip(numbers["loss"], numbers["loss_half_width"])],
        "Δ at equal params (95% CI)": [
            "reference" if v == reference else
            (f"{d:+.4f} [{lo:+.4f}, {hi:+.4f}]" if lo is not None and not pd.isna(lo) else fmt(d, "+.4f"))
            for v, d, lo, hi in zip(numbers["variant"], numbers.get("difference", [None] * len(numbers)),
                                    numbers.get("difference_low", [None] * len(numbers)),
                                    numbers.get("difference_high", [None] * len(numbers)))],
        "p (Holm)": [fmt(p, ".3g") for p in numbers.get("p_holm", [None] * len(numbers))],
        "Δ at equal FLOPs (fit)": [fmt(d, "+.4f") for d in numbers.get("loss_difference_equal_flops",
                                                                      [None] * len(numbers))],
        "compute multiplier (95% CI)": [
            "" if pd.isna(m) else f"{m:.3g} [{lo:.3g}, {hi:.3g}]"
            for m, lo, hi in zip(numbers.get("multiplier", [np.nan] * len(numbers)),
                                 numbers.get("multiplier_low", [np.nan] * len(numbers)),
                                 numbers.get("multiplier_high", [np.nan] * len(numbers)))],
    })
    explain = [f"Δ at equal params: variant − {reference}, final validation loss, paired by seed (parameter counts "
               f"as shown; matched runs within 0.5%), Holm-adjusted over every (variant, rung). Δ at equal FLOPs: the "
               f"variant's fitted curve minus {reference}'s at {reference}'s compute of the rung. Compute multiplier: "
               f"{reference}'s compute to reach the variant's loss (its fitted curve) over the variant's compute "
               f"(> 1: the variant saves compute)."]
    if numbers["lr_at_edge"].any():
        explain.append("lr (edge): chosen at the lowest or highest rate its grid tried; a wider grid might choose "
                       "another.")
    if unequal:
        warning = (f"WARNING: seeds differ from {reference}'s at the same rung (an interrupted or partial sweep): "
                   + "; ".join(unequal) + ". The paired tests use the shared seeds; means and fits use every run.")
        log.warning(warning)
        notes.append(warning)
    return Table("per_rung", numbers, display, explain + notes)


def fits_table(scaling: ScalingComparison, notes: list[str]) -> Table:
    f = scaling.fits
    display = pd.DataFrame({
        "variant": f["variant"], "rungs": f["n_rungs"], "runs": f["n_runs"],
        **{name: [f"{v:.4g} [{lo:.4g}, {hi:.4g}]" for v, lo, hi in zip(f[name], f[f"{name}_low"], f[f"{name}_high"])]
           for name in ("E", "A", "alpha")}})
    explain = [f"L(C) = E + A·C^(−alpha), C in training FLOPs; {scaling.confidence:.0%} percentile intervals over "
               f"{scaling.resamples - scaling.failed_resamples} of {scaling.resamples} seed resamples "
               f"({scaling.failed_resamples} dropped: a fit failed)."]
    return Table("fits", f, display, explain + notes)


FEW_SEEDS = 5  # up to this many, a multipliers table says how few distinct draws its bootstrap has


def multipliers_table(scaling: ScalingComparison, notes: list[str]) -> Table:
    m, trends = scaling.multipliers, scaling.trends.set_index("variant")
    display = pd.DataFrame({
        "variant": m["variant"], "rung": m["rung"], "n": m["n_seeds"],
        "compute (PFLOP)": m["compute"].map(lambda v: f"{v / 1e15:.4g}"),
        "multiplier (95% CI)": [f"{v:.3g} [{lo:.3g}, {hi:.3g}]" for v, lo, hi in
                                zip(m["multiplier"], m["multiplier_low"], m["multiplier_high"])],
        "extrapolated": m["extrapolated"].map({True: "yes", False: "no"}),
        "trend: slope of log m vs log C (95% CI)": [
            "" if pd.isna(trends.loc[v, "slope"]) else
            f"{trends.loc[v, 'slope']:+.3f} [{trends.loc[v, 'slope_low']:+.3f}, {trends.loc[v, 'slope_high']:+.3f}]"
            for v in m["variant"]]})
    explain = ["multiplier > 1: the reference needs that many times the variant's compute for the variant's loss; "
               "extrapolated: that compute lies outside the reference's rungs; trend > 0: the advantage grows with "
               "scale (rungs with an infinite multiplier are left out of the slope)."]
    seeds = int(m["n_seeds"].min()) if len(m) else 0
    if 0 < seeds <= FEW_SEEDS:  # resampling n seeds with replacement gives C(2n-1, n) distinct draws
        explain.append(f"With {seeds} seed(s) the bootstrap has only {math.comb(2 * seeds - 1, seeds)} distinct draws "
                       f"of seeds: read each interval as the range of a few estimates, not as its stated coverage.")
    return Table("multipliers", m.merge(scaling.trends, on="variant", how="left", suffixes=("", "_trend")),
                 display, explain + notes)


def lr_selection_table(chosen: pd.DataFrame, seeds: list[int], name: str) -> Table:
    # One order from runs and from a result read back: rung, then variant.
    chosen = chosen.sort_values(["rung", "variant"], ignore_index=True)
    display = pd.DataFrame({
        "variant": chosen["variant"], "rung": chosen["rung"], "grid": chosen["grid"],
        "chosen lr": chosen["lr"].map(lambda v: f"{v:g}"),
        "selection loss": chosen["selection_loss"].map(lambda v: f"{v:.4f}"),
        "runs": chosen["selection_runs"], "at the grid's edge": chosen["at_edge"].map({True: "yes", False: ""})})
    notes = [f"Chosen on the runs at seed(s) {', '.join(map(str, seeds))}: the lowest mean final validation loss; "
             f"those runs are in no other table (per_run.csv lists them). At the grid's edge: the lowest or "
             f"highest rate tried, so a wider grid might choose another (python train.py -m "
             f"experiment={name}_widen tries one step beyond). A rate marked diverged ended with a non-finite "
             f"loss and bounds the grid on its side."]
    return Table("lr_selection", chosen, display, notes)


def loss_vs_compute_figure(runs: pd.DataFrame, scaling: ScalingComparison | None, variants: list[str]):
    colors = variant_colors(variants)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    fits = scaling.fits.set_index("variant") if scaling else None
    span = np.geomspace(runs["compute"].min() / 1.5, runs["compute"].max() * 1.5, 200)
    for variant in variants:
        cell = runs[runs["variant"] == variant]
        ax.scatter(cell["compute"], cell["loss"], s=12, color=colors[variant], alpha=0.7, label=variant)
        if fits is not None and variant in fits.index:
            E, A, alpha = fits.loc[variant, ["E", "A", "alpha"]]
            ax.plot(span, E + A * span ** (-alpha), color=colors[variant], linewidth=1.2)
    ax.set_xscale("log")
    ax.set_xlabel("training compute (FLOPs)")
    ax.set_ylabel("final validation loss (nats/token)")
    ax.set_title("loss vs compute: seeds (dots), fitted E + A·C^(−α) (lines)")
    ax.legend(fontsize=8)
    return fig


def multiplier_figure(scaling: ScalingComparison, variants: list[str]):
    colors = variant_colors(variants)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for variant in variants:
        m = scaling.multipliers[scaling.multipliers["variant"] == variant]
        m = m[np.isfinite(m["multiplier"])]
        if m.empty:
            continue
        low = np.clip(m["multiplier"] - m["multiplier_low"], 0, None)
        high = np.clip(m["multiplier_high"] - m["multiplier"], 0, None)
        unbounded = ~np.isfinite(high)
        ax.errorbar(m["compute"], m["multiplier"], yerr=[low, np.where(unbounded, 0, high)], marker="o", capsize=3,
                    color=colors[variant], label=variant)
        if unbounded.any():  # no upper bound: an arrow up from the point, not a bar closed at it
            up = m[unbounded.to_numpy()]
            ax.errorbar(up["compute"], up["multiplier"], yerr=[np.zeros(len(up)), up["multiplier"]], lolims=True,
                        fmt="none", color=colors[variant])
        outside = m[m["extrapolated"].astype(bool)]  # read off the reference's curve beyond its rungs
        ax.scatter(outside["compute"], outside["multiplier"], s=22, facecolors="white", edgecolors=colors[variant],
                   zorder=3)
    ax.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.xaxis.set_minor_formatter(plt.NullFormatter())  # the rungs' decades only: minor labels overlap
    for which in ("major", "minor"):  # multipliers span less than a decade: label them plainly (0.6, 2)
        getattr(ax.yaxis, f"set_{which}_formatter")(plt.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_xlabel("variant's training compute at the rung (FLOPs)")
    ax.set_ylabel(f"compute multiplier vs {scaling.reference}")
    ax.set_title("compute multiplier per rung, 95% bootstrap interval\n"
                 f"open: {scaling.reference}'s curve read beyond its rungs; arrow: no upper bound", fontsize=9)
    ax.legend(fontsize=8)
    return fig


class LadderComparison(NamedTuple):
    frame: pd.DataFrame  # every run, the selection seeds' too
    selection_seeds: list[int]
    chosen: pd.DataFrame  # the learning rate of each (variant, rung)
    compared: pd.DataFrame  # the runs at the other seeds, at the chosen rates
    notes: list[str]
    scaling: ScalingComparison | None
    fit_problem: str | None  # why there is no scaling fit


def ladder_comparison(runs_dir: str | Path, name: str, cfg: EvaluateConfig) -> LadderComparison:
    """The ladder's runs, the chosen rates, the compared runs (seeds outside the selection, at the
    chosen rates), notes, and the scaling fit or why there is none."""
    runs = ladder_runs(runs_dir, name)
    check_one_setting(runs)
    return compare_ladder(ladder_frame(runs), selection_seeds(runs), name, cfg)


def ladder_result_comparison(result_dir: str | Path, cfg: EvaluateConfig,
                             setting: str = "ladder_result") -> tuple[LadderComparison, dict]:
    """The same comparison from a ladder's evaluation directory (``tables/per_run.csv`` and
    ``evaluation.json``, as ``evaluate_ladder`` writes them, e.g. a committed reference result)
    instead of its run directories, and that ``evaluation.json``; ``setting`` names it in errors."""
    per_run, meta = read_evaluation_dir(result_dir, setting, "ladder", ("ladder", "selection_seeds"))
    return compare_ladder(pd.read_csv(per_run), list(meta["selection_seeds"]), meta["ladder"], cfg), meta


def compare_ladder(frame: pd.DataFrame, seeds: list[int], name: str, cfg: EvaluateConfig) -> LadderComparison:
    """``frame``: one row per run (``attnlab.ladder.ladder_frame``); ``seeds``: the selection seeds."""
    check_reference_variant(cfg.baseline, frame["variant"])
    chosen = select_learning_rates(frame, seeds)
    compared, notes = comparison_runs(frame, chosen, seeds)
    if compared.empty:
        raise ValueError(f"ladder {name!r} has no run outside its selection seeds {seeds} at a chosen rate; "
                         f"train the comparison, e.g. python train.py -m experiment={name}")
    scaling, fit_problem = None, None
    points = compared[["variant", "rung", "seed", "compute", "loss"]]
    while scaling is None and fit_problem is None:
        try:
            scaling = scaling_comparison(points, cfg.baseline, resamples=min(cfg.bootstrap_resamples, 2000),
                                         seed=cfg.bootstrap_seed, confidence=cfg.confidence)
        except (FitError, ValueError) as err:
            variant = getattr(err, "variant", None)
            if variant is None or variant == cfg.baseline:  # nothing to read the others against
                fit_problem = f"No scaling fit: {err}."
                notes.append(fit_problem)
            else:  # the others are still fitted against the reference; this one keeps its per-rung rows
                notes.append(f"No scaling fit for {variant} ({err}); the other variants are fitted without it.")
                points = points[points["variant"] != variant]
                if set(points["variant"]) == {cfg.baseline}:
                    fit_problem = f"No scaling fit: no variant but {cfg.baseline} could be fitted."
                    notes.append(fit_problem)
    return LadderComparison(frame, seeds, chosen, compared, notes, scaling, fit_problem)


def evaluate_ladder(cfg: EvaluateConfig, name: str) -> Path:
    out = cfg.output_path(name)
    comparison = ladder_comparison(cfg.runs_dir, name, cfg)
    frame, seeds = comparison.frame, comparison.selection_seeds
    return write_ladder_evaluation(cfg, name, comparison, out, source=f"the runs under {cfg.runs_dir}",
                                   runs=sorted(comparison.compared["run_dir"]),
                                   selection_runs=sorted(frame.loc[frame["seed"].isin(seeds), "run_dir"]))


def evaluate_ladder_result(cfg: EvaluateConfig) -> Path:
    """The ladder evaluated again from ``cfg.ladder_again`` (its per-run losses), e.g. a committed
    result with a newer attnlab, without training it again."""
    comparison, meta = ladder_result_comparison(cfg.ladder_again, cfg, "ladder_again")
    name = meta["ladder"]
    out = cfg.output_path_reading("ladder_again", "ladder", name)
    return write_ladder_evaluation(cfg, name, comparison, out, source=f"the ladder result {cfg.ladder_again}",
                                   runs=list(meta.get("runs", [])), selection_runs=list(meta.get("selection_runs", [])))


def write_ladder_evaluation(cfg: EvaluateConfig, name: str, comparison: LadderComparison, out: Path, source: str,
                            runs: list[str], selection_runs: list[str]) -> Path:
    """Tables, figures and evaluation.json of the ladder ``name`` from its comparison."""
    frame, seeds, chosen, compared, notes, scaling, fit_problem = comparison
    out.mkdir(parents=True, exist_ok=True)
    before = prepare_outputs(out)
    if fit_problem:
        log.warning(fit_problem)
    variants = variant_order(compared["variant"].unique(), cfg.baseline)
    tables = [lr_selection_table(chosen, seeds, name),
              per_rung_table(compared, scaling, cfg.baseline, variants, cfg, chosen, notes)]
    if scaling is not None:
        tables += [fits_table(scaling, notes), multipliers_table(scaling, notes)]
    for table in tables:
        table.write(out / "tables")
    # Every run, the selection seeds' too: the numbers the tables are computed from.
    frame.drop(columns="run_dir", errors="ignore").sort_values(["rung", "variant", "lr", "seed"]).to_csv(
        out / "tables" / "per_run.csv", index=False)
    if "figures" in cfg.outputs:
        save_figure(loss_vs_compute_figure(compared, scaling, variants), out / "figures", "loss_vs_compute")
        if scaling is not None:
            save_figure(multiplier_figure(scaling, variants), out / "figures", "multiplier")
    (out / "evaluation.json").write_text(json.dumps({
        "ladder": name, "source": source, "reference": cfg.baseline, "selection_seeds": seeds,
        "runs": runs, "selection_runs": selection_runs,
        "notes": notes, "fit": None if fit_problem else "ok",
        "outputs": before.finish(redone=redone_by_family(cfg.outputs))},
        indent=2), encoding="utf-8")
    return out

"""``evaluate(cfg)``: every table, figure, sample and heatmap of one experiment.

    results/<experiment>/
        tables/           per_run, aggregate, vs_baseline (.md .csv .tex), attention_stats_per_run.csv
        figures/          val_loss_vs_tokens, final_val_loss, throughput (.png .pdf)
        samples.md, samples.json
        heatmaps/         <variant>/layer<l>_head<h>.{png,pdf}, grid_layer<l>.{png,pdf}
        attention_stats.csv, attention_stats.md
        evaluation.json   the configuration, the runs this was computed from, the runs skipped and why

Evaluation works with whatever exists: a run that is unfinished or unreadable (summary.json,
metrics.csv, or, when models are needed, its checkpoint) is named, skipped and listed; a
comparison that cannot be made (no runs of the reference variant) is left out with a note
saying why; everything else is written.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from attnlab.analysis import maps as maps_lib
from attnlab.analysis.config import EvaluateConfig
from attnlab.analysis.figures import final_loss_figure, loss_curve_figure, throughput_figure, validation_curves
from attnlab.analysis.heatmaps import save_heatmaps
from attnlab.analysis.samples import sample_model, write_samples
from attnlab.analysis.style import save_figure
from attnlab.analysis.tables import (Table, aggregate_table, baseline_tests_table, comparability_notes,
                                     comparison_skipped, markdown, per_run_table, runs_frame, variant_order)
from attnlab.data.tokenizer import Tokenizer
from attnlab.generate import check_fits_context
from attnlab.model import GPT
from attnlab.runs import RunDir, experiment_run_dirs, experiment_runs, latest_experiment

log = logging.getLogger(__name__)
MODEL_OUTPUTS = ("samples", "heatmaps", "attention_stats")  # the outputs that load checkpoints


def run_name(run: RunDir) -> str:
    return f"{run.variant}/seed{run.seed}"


@dataclass
class Experiment:
    """The evaluable runs of one experiment, in table order, with their summary numbers."""

    name: str
    runs: list[RunDir]
    frame: pd.DataFrame  # tables.runs_frame: one row per run
    variants: list[str]  # baseline first
    notes: list[str]  # comparability warnings and skipped runs, shown under every table
    skipped: dict[str, list[str]] = dataclasses.field(default_factory=dict)  # variant/seed<k> -> reasons


def load_experiment(runs_dir: str | Path, experiment: str | None = None, baseline: str = "baseline",
                    allow_mixed_data: bool = False, checkpoint: str | None = None) -> Experiment:
    """The runs of ``experiment`` that can be read; the others are named, with why, in ``skipped``.

    ``checkpoint`` (best/last): runs also need that checkpoint (for samples, heatmaps, statistics).
    """
    name = experiment or latest_experiment(runs_dir)
    runs, skipped = [], {}
    for run in experiment_run_dirs(runs_dir, name):
        reasons = run.problems(checkpoint)
        if reasons:
            skipped[run_name(run)] = reasons
            log.warning("skipping run %s (%s): %s", run_name(run), run.path, "; ".join(reasons))
        else:
            runs.append(run)
    if not runs:
        experiment_runs(runs_dir, name)  # none finished: the error names the experiments there are
        raise ValueError(f"no run of experiment {name!r} under {runs_dir} can be evaluated: "
                         + "; ".join(f"{run} ({', '.join(reasons)})" for run, reasons in skipped.items()))
    frame = runs_frame(runs, baseline)
    notes = comparability_notes(frame, allow_mixed_data)
    for note in notes:
        log.warning(note)
    if skipped:
        notes.append("Skipped runs (unfinished or unreadable; in no table, figure or statistic): "
                     + "; ".join(f"{run} ({', '.join(reasons)})" for run, reasons in skipped.items()) + ".")
    order = {str(p): i for i, p in enumerate(frame["run_dir"])}
    return Experiment(name, sorted(runs, key=lambda r: order[str(r.path)]), frame,
                      variant_order(frame["variant"], baseline), notes, skipped)


def representative_runs(exp: Experiment, seed: int | None = None) -> list[RunDir]:
    """One run per variant (for samples and heatmaps): ``seed``, or each variant's lowest seed.

    With ``seed``, a variant without that seed is left out (with a warning); no variant
    having it is an error.
    """
    by_variant = {v: [r for r in exp.runs if r.variant == v] for v in exp.variants}
    if seed is None:
        return [min(runs, key=lambda r: r.seed) for runs in by_variant.values()]
    chosen = [r for runs in by_variant.values() for r in runs if r.seed == seed]
    seeds = "; ".join(f"{v}: {', '.join(str(r.seed) for r in runs)}" for v, runs in by_variant.items())
    if not chosen:
        raise ValueError(f"model_seed={seed} has no evaluable run of any variant; seeds per variant: {seeds}")
    for variant in by_variant.keys() - {r.variant for r in chosen}:
        log.warning("model_seed=%d: variant %r has no evaluable run with that seed (seeds per variant: %s); "
                    "it gets no samples or heatmaps", seed, variant, seeds)
    return chosen


def load_run(run: RunDir, checkpoint: str = "best", device: str = "cpu") -> tuple[GPT, Tokenizer]:
    return run.load_model(checkpoint).to(device), run.load_tokenizer()


def write_tables(exp: Experiment, out_dir: Path, baseline: str = "baseline", confidence: float = 0.95,
                 alpha: float = 0.05, power: float = 0.8, resamples: int = 10_000,
                 bootstrap_seed: int = 0) -> list[Table]:
    tables = [per_run_table(exp.frame, exp.notes), aggregate_table(exp.frame, confidence, exp.notes),
              baseline_tests_table(exp.frame, baseline, alpha, notes=exp.notes, confidence=confidence,
                                   power=power, resamples=resamples, bootstrap_seed=bootstrap_seed)]
    for table in tables:
        table.write(out_dir)
    return tables


def write_figures(exp: Experiment, out_dir: Path, confidence: float = 0.95) -> list[Path]:
    curves = validation_curves(exp.runs)
    return [*save_figure(loss_curve_figure(curves, exp.variants, confidence), out_dir, "val_loss_vs_tokens"),
            *save_figure(final_loss_figure(exp.frame, exp.variants, confidence), out_dir, "final_val_loss"),
            *save_figure(throughput_figure(exp.frame, exp.variants, confidence), out_dir, "throughput")]


def attention_statistics_for(runs: Sequence[RunDir], prompts: Sequence[str], checkpoint: str = "best",
                             device: str = "cpu", load: Callable = load_run) -> pd.DataFrame:
    """Statistics of every run (every seed) on every prompt, one row per layer and head."""
    maps = []
    for run in runs:
        loaded = load(run, checkpoint, device)
        if loaded is None:  # a checkpoint that failed to load (``evaluate`` says which)
            continue
        model, tokenizer = loaded
        maps += [maps_lib.attention_maps(model, tokenizer, p, run.variant, run.seed) for p in prompts]
    return maps_lib.attention_statistics(maps)


def check_prompts_fit(runs: Sequence[RunDir], cfg: EvaluateConfig) -> None:
    """Every prompt (plus the new tokens) fits every model's context, or a ValueError naming it."""
    for run in runs:
        tokenizer = run.load_tokenizer()
        block_size = run.load_config()["resolved_model"]["block_size"]
        for prompt, new in [*((p, cfg.sampling.max_new_tokens) for p in cfg.prompts),
                            (cfg.heatmap_prompt or cfg.prompts[0], 0)]:
            try:
                check_fits_context(len(tokenizer.encode(prompt, bos=True)), new, block_size)
            except ValueError as err:
                raise ValueError(f"{run.variant}/seed{run.seed}, prompt {prompt!r}: {err}") from None


def evaluate(cfg: EvaluateConfig) -> Path:
    cfg.validate()
    needs_models = bool(set(MODEL_OUTPUTS) & set(cfg.outputs))
    exp = load_experiment(cfg.runs_dir, cfg.experiment, cfg.baseline, cfg.allow_mixed_data,
                          checkpoint=cfg.checkpoint if needs_models else None)
    out = Path(cfg.output_dir) if cfg.output_dir else Path(cfg.runs_dir).parent / exp.name
    if out.resolve() == Path(cfg.runs_dir).resolve():
        raise ValueError(f"output directory {out} is the runs directory; set output_dir=<another path>")
    out.mkdir(parents=True, exist_ok=True)
    log.info("evaluating experiment %r (%d runs, %d skipped) into %s", exp.name, len(exp.runs),
             len(exp.skipped), out)
    not_produced: list[str] = []  # outputs (or parts) left out, and why

    def leave_out(message: str) -> None:
        log.warning(message)
        not_produced.append(message)

    chosen: list[RunDir] = []  # one run per variant for samples and heatmaps
    if {"samples", "heatmaps"} & set(cfg.outputs):
        chosen = representative_runs(exp, cfg.model_seed)
        not_produced += [f"samples, heatmaps: variant {v!r} has no evaluable run with model_seed={cfg.model_seed}"
                         for v in exp.variants if v not in {r.variant for r in chosen}]
        check_prompts_fit(chosen, cfg)  # before minutes of tables and figures, not after
    if "tables" in cfg.outputs:
        reason = comparison_skipped(exp.variants, cfg.baseline)
        if reason is not None:
            leave_out(f"vs_baseline: {reason}")
        write_tables(exp, out / "tables", cfg.baseline, cfg.confidence, cfg.alpha, cfg.power,
                     cfg.bootstrap_resamples, cfg.bootstrap_seed)
    if "figures" in cfg.outputs:
        write_figures(exp, out / "figures", cfg.confidence)
    loaded: dict[Path, tuple[GPT, Tokenizer] | None] = {}

    def load(run: RunDir, checkpoint: str, device: str) -> tuple[GPT, Tokenizer] | None:
        # Samples, heatmaps and statistics share the representative models; other seeds load once.
        # A checkpoint that passed the checks but does not load is named and left out (None).
        if run.path not in loaded:
            try:
                model_and_tokenizer = load_run(run, checkpoint, device)
            except (OSError, ValueError, RuntimeError) as err:
                leave_out(f"{run_name(run)}: checkpoints/{checkpoint}.ckpt does not load ({err}); "
                          f"left out of samples, heatmaps and attention statistics")
                model_and_tokenizer = None
            if run not in chosen and model_and_tokenizer is not None:
                return model_and_tokenizer
            loaded[run.path] = model_and_tokenizer
        return loaded[run.path]

    if "samples" in cfg.outputs:
        samples = []
        for run, (model, tokenizer) in _loaded(chosen, load, cfg):
            samples += sample_model(model, tokenizer, cfg.prompts, cfg.sampling, run.variant, run.seed,
                                    cfg.checkpoint)
        write_samples(samples, cfg.sampling, out)
    if "heatmaps" in cfg.outputs:
        prompt = cfg.heatmap_prompt or cfg.prompts[0]
        maps = [maps_lib.attention_maps(model, tokenizer, prompt, run.variant, run.seed)
                for run, (model, tokenizer) in _loaded(chosen, load, cfg)]
        if maps:
            save_heatmaps(maps, out / "heatmaps", cfg.heatmap_layers)
        else:
            leave_out("heatmaps: no model could be loaded")
    if "attention_stats" in cfg.outputs:
        per_run = attention_statistics_for(exp.runs, cfg.prompts, cfg.checkpoint, cfg.device, load)
        if per_run.empty:
            leave_out("attention_stats: no model could be loaded")
        else:
            (out / "tables").mkdir(parents=True, exist_ok=True)
            per_run.to_csv(out / "tables" / "attention_stats_per_run.csv", index=False)
            write_attention_stats(maps_lib.summarize_statistics(per_run), out, cfg.prompts, exp.notes)

    record = {"experiment": exp.name, "config": dataclasses.asdict(cfg),
              "runs": [str(r.path) for r in exp.runs],
              "skipped_runs": [{"run": name, "reasons": reasons} for name, reasons in exp.skipped.items()],
              "not_produced": not_produced, "notes": exp.notes}
    (out / "evaluation.json").write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n",
                                         encoding="utf-8")
    return out


def _loaded(runs: Sequence[RunDir], load: Callable, cfg: EvaluateConfig):
    """(run, (model, tokenizer)) for the runs whose checkpoint loads."""
    for run in runs:
        model_and_tokenizer = load(run, cfg.checkpoint, cfg.device)
        if model_and_tokenizer is not None:
            yield run, model_and_tokenizer


def write_attention_stats(summary: pd.DataFrame, out_dir: Path, prompts: Sequence[str],
                          notes: Sequence[str] = ()) -> list[Path]:
    csv_path, md_path = out_dir / "attention_stats.csv", out_dir / "attention_stats.md"
    summary.to_csv(csv_path, index=False)
    shown = summary.copy()
    for column in maps_lib.STATISTICS:
        shown[column] = shown[column].map(lambda v: "–" if pd.isna(v) else f"{v:.3f}")
    header = ["# Attention statistics", "",
              "Per variant, layer and head; mean over query positions >= 1, then over seeds and prompts "
              "(definitions: `attnlab/analysis/maps.py`).",
              "entropy in nats; entropy_norm = entropy / log(#visible keys) (1: uniform); distance: mean "
              "look-back in tokens; sink: mass on `<s>`; diagonal: mass on the query itself; punctuation: "
              "mass on 、。,. and similar keys (– when a prompt has none).", "",
              "Prompts: " + " / ".join(f"`{p}`" for p in prompts), ""]
    md_path.write_text("\n".join(header) + "\n" + markdown(shown) + "".join(f"\n> {n}\n" for n in notes),
                       encoding="utf-8")
    return [csv_path, md_path]

"""``evaluate(cfg)``: every table, figure, sample and heatmap of one experiment.

    results/<experiment>/
        tables/           per_run, aggregate, vs_baseline (.md .csv .tex), attention_stats_per_run.csv
        figures/          val_loss_vs_tokens, final_val_loss, throughput, induction_vs_tokens,
                          head_scores, loss_by_position (.png .pdf)
        samples.md, samples.json
        heatmaps/         <variant>/layer<l>_head<h>.{png,pdf}, grid_layer<l>.{png,pdf},
                          diff_layer<l>.{png,pdf} (each variant minus the reference)
        attention_stats.csv, attention_stats.md
        head_scores.csv, head_scores.md   induction, previous-token, sink, entropy, distance per head
        loss_by_position.csv              validation loss at each position of the window, per run
        evaluation.json   the configuration, the runs this was computed from, the runs skipped and why,
                          the files written (``outputs``: the next evaluation replaces those of the
                          outputs it makes, see attnlab/analysis/outputs.py, and keeps the rest)

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
import yaml

from attnlab.analysis import maps as maps_lib
from attnlab.analysis.config import EvaluateConfig
from attnlab.analysis.figures import (final_loss_figure, head_scores_figure, induction_curve_figure, logged_curves,
                                      loss_by_position_figure, loss_curve_figure, throughput_figure,
                                      validation_curves)
from attnlab.analysis.battery import evaluate_battery, evaluate_battery_result, is_battery
from attnlab.analysis.ladder import evaluate_ladder, evaluate_ladder_result, is_ladder
from attnlab.analysis.outputs import prepare_outputs, redone_by
from attnlab.analysis.head_scores import SCORES, SPECIAL_IDS, head_scores_frame, summarize_head_scores
from attnlab.analysis.heatmaps import save_difference_heatmaps, save_heatmaps
from attnlab.analysis.position_loss import loss_by_position, validation_windows
from attnlab.analysis.samples import sample_model, write_samples
from attnlab.analysis.stats import mean_ci
from attnlab.analysis.style import save_figure
from attnlab.analysis.tables import (Table, aggregate_table, baseline_tests_table, check_reference_variant,
                                     comparability_notes, comparison_skipped, markdown, per_run_table, runs_frame,
                                     variant_order)
from attnlab.data.tokenizer import Tokenizer
from attnlab.generate import check_fits_context
from attnlab.model import GPT
from attnlab.runs import RunDir, experiment_run_dirs, experiment_runs, latest_experiment

log = logging.getLogger(__name__)
MODEL_OUTPUTS = ("samples", "heatmaps", "attention_stats", "head_scores", "loss_by_position")  # load checkpoints


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
    # Newest: for samples and heatmaps (``checkpoint``), the newest experiment trained on text.
    name = experiment or latest_experiment(runs_dir, with_text=checkpoint is not None)
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
    notes = comparability_notes(frame, allow_mixed_data) + selection_seed_notes(runs)
    for note in notes:
        log.warning(note)
    if skipped:
        notes.append("Skipped runs (unfinished or unreadable; in no table, figure or statistic): "
                     + "; ".join(f"{run} ({', '.join(reasons)})" for run, reasons in skipped.items()) + ".")
    order = {str(p): i for i, p in enumerate(frame["run_dir"])}
    return Experiment(name, sorted(runs, key=lambda r: order[str(r.path)]), frame,
                      variant_order(frame["variant"], baseline), notes, skipped)


def selection_seed_notes(runs: Sequence[RunDir]) -> list[str]:
    """A note where runs of a ladder member are on the seeds that chose its learning rate: each
    is the best of the rates tried on that seed, so a comparison that counts it is biased toward
    the rate; the ladder's own evaluation leaves those seeds out of its comparisons."""
    chose: dict[str, list[str]] = {}
    for run in runs:
        try:
            ladder = run.load_config().get("ladder") or {}
        except (OSError, yaml.YAMLError, AttributeError):  # no readable config.yaml: not known to be one
            continue
        if ladder.get("name") and run.seed in (ladder.get("selection_seeds") or []):
            chose.setdefault(ladder["name"], []).append(f"{run.variant}/seed{run.seed}")
    return [f"NOTE: {', '.join(names)} chose this learning rate (selection seeds of ladder {ladder!r}); a "
            f"comparison that counts them favours it; python evaluate.py experiment={ladder} leaves them out"
            for ladder, names in chose.items()]


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
    """The loss, final-loss and throughput figures; ``induction_vs_tokens`` too when some run logged
    ``heads/induction_max`` (``HeadScoresCallback``; runs trained before it did not)."""
    curves = validation_curves(exp.runs)
    paths = [*save_figure(loss_curve_figure(curves, exp.variants, confidence), out_dir, "val_loss_vs_tokens"),
             *save_figure(final_loss_figure(exp.frame, exp.variants, confidence), out_dir, "final_val_loss"),
             *save_figure(throughput_figure(exp.frame, exp.variants, confidence), out_dir, "throughput")]
    induction = logged_curves(exp.runs, "heads/induction_max", "induction_max")
    if not induction.empty:
        paths += save_figure(induction_curve_figure(induction, exp.variants, confidence), out_dir,
                             "induction_vs_tokens")
    return paths


Measure = Callable[[RunDir, GPT, Tokenizer], "pd.DataFrame | None"]


def measure_runs(runs: Sequence[RunDir], measures: dict[str, Measure], checkpoint: str = "best",
                 device: str = "cpu", load: Callable = load_run) -> dict[str, pd.DataFrame]:
    """Each measure of every run (every seed), the model loaded once per run; per measure the
    rows of all runs (a measure returning None leaves that run out of it)."""
    frames: dict[str, list[pd.DataFrame]] = {name: [] for name in measures}
    for run in runs:
        loaded = load(run, checkpoint, device)
        if loaded is None:  # a checkpoint that failed to load (``evaluate`` says which)
            continue
        model, tokenizer = loaded
        for name, measure in measures.items():
            frame = measure(run, model, tokenizer)
            if frame is not None and not frame.empty:
                frames[name].append(frame)
    return {name: pd.concat(parts, ignore_index=True) if parts else pd.DataFrame() for name, parts in frames.items()}


def attention_statistics_for(runs: Sequence[RunDir], prompts: Sequence[str], checkpoint: str = "best",
                             device: str = "cpu", load: Callable = load_run) -> pd.DataFrame:
    """Statistics of every run (every seed) on every prompt, one row per layer and head."""
    return measure_runs(runs, {"stats": _attention_statistics_measure(prompts)}, checkpoint, device, load)["stats"]


def _attention_statistics_measure(prompts: Sequence[str]) -> Measure:
    def measure(run: RunDir, model: GPT, tokenizer: Tokenizer) -> pd.DataFrame:
        return maps_lib.attention_statistics(
            [maps_lib.attention_maps(model, tokenizer, p, run.variant, run.seed) for p in prompts])
    return measure


def _head_scores_measure(cfg: EvaluateConfig, leave_out: Callable[[str], None]) -> Measure:
    def measure(run: RunDir, model: GPT, tokenizer: Tokenizer) -> pd.DataFrame | None:
        special = [i for i in (tokenizer.unk_id, tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id, *SPECIAL_IDS)
                   if i >= 0]
        try:
            return head_scores_frame(model, run.variant, run.seed, tokenizer.vocab_size, cfg.head_probe_sequences,
                                     cfg.head_probe_segment_len, cfg.head_probe_seed, tokenizer.bos_id, special)
        except ValueError as err:  # a context or vocabulary too small for the probe
            leave_out(f"head_scores: {run_name(run)}: {err}; left out")
            return None
    return measure


def _loss_by_position_measure(cfg: EvaluateConfig, leave_out: Callable[[str], None]) -> Measure:
    windows: dict = {}  # shared by the runs trained on the same data

    def measure(run: RunDir, model: GPT, tokenizer: Tokenizer) -> pd.DataFrame | None:
        try:
            x, y = validation_windows(run, cfg.position_windows, windows)
        except (OSError, ValueError, KeyError, TypeError) as err:  # DataError is a ValueError
            leave_out(f"loss_by_position: {run_name(run)}: its validation data cannot be read ({err}); left out")
            return None
        losses = loss_by_position(model, x, y)
        return pd.DataFrame({"variant": run.variant, "seed": run.seed, "position": range(len(losses)),
                             "loss": losses, "windows": len(x)})
    return measure


def check_prompts_fit(runs: Sequence[RunDir], cfg: EvaluateConfig) -> None:
    """Every prompt (plus the new tokens) fits every model's context, or a ValueError naming the
    setting, the run and what would fit."""
    heatmap = ("heatmap_prompt", cfg.heatmap_prompt) if cfg.heatmap_prompt else ("prompts[0] (the heatmaps' prompt)",
                                                                                 cfg.prompts[0])
    for run in runs:
        tokenizer = run.load_tokenizer()
        block_size = run.load_config()["resolved_model"]["block_size"]
        for (setting, prompt), new in [*(((f"prompts[{i}]", p), cfg.sampling.max_new_tokens)
                                         for i, p in enumerate(cfg.prompts)), (heatmap, 0)]:
            try:
                check_fits_context(len(tokenizer.encode(prompt, bos=True)), new, block_size, "sampling.max_new_tokens")
            except ValueError as err:
                # Small models (a tiny block_size) meet the default prompts here: say how to
                # give others, quoted for the shell as Hydra needs for non-ASCII text.
                advice = ("Give a shorter one, e.g. \"heatmap_prompt='...'\" (quoted for the shell)"
                          if setting == "heatmap_prompt" else
                          "Give shorter prompts, e.g. \"prompts=['...','...']\" (quoted for the shell), or a "
                          "smaller sampling.max_new_tokens")
                raise ValueError(f"{setting}={prompt!r} does not fit run {run.variant}/seed{run.seed}: {err}. "
                                 f"{advice}") from None


def check_heatmap_layers(runs: Sequence[RunDir], layers: Sequence[int] | None) -> None:
    """Every heatmap layer asked for exists in every model drawn, or a ValueError naming them."""
    if layers is None or not runs:
        return
    n_layer = min(run.load_config()["resolved_model"]["n_layer"] for run in runs)
    missing = [layer for layer in layers if not 0 <= layer < n_layer]
    if missing:
        raise ValueError(f"heatmap_layers={list(layers)}: layers {missing} do not exist in every model drawn "
                         f"(n_layer={n_layer}); allowed: 0..{n_layer - 1}, or null for every layer")


def without_text_outputs(cfg: EvaluateConfig) -> tuple[EvaluateConfig, str | None]:
    """An experiment trained on a synthetic task (data=mqar, induction or a MAD task) has no tokenizer, and
    the outputs that load models encode text prompts: those are dropped, with the note saying why."""
    name = cfg.experiment or latest_experiment(cfg.runs_dir)
    runs = experiment_run_dirs(cfg.runs_dir, name)
    dropped = [o for o in cfg.outputs if o in MODEL_OUTPUTS]
    if not dropped or not runs or any(run.tokenizer.is_file() for run in runs):
        return cfg, None
    note = (f"{', '.join(dropped)}: the runs of {name!r} have no tokenizer.model (trained on a synthetic task, "
            f"such as data=mqar, data=induction or a MAD task), and these outputs encode text prompts; the "
            f"tables report the task's accuracy on its scored positions (final val acc) instead")
    log.warning(note)
    return dataclasses.replace(cfg, outputs=[o for o in cfg.outputs if o not in MODEL_OUTPUTS]), note


def evaluate(cfg: EvaluateConfig) -> Path:
    cfg.validate()
    if cfg.battery_result is not None:
        return evaluate_battery_result(cfg)  # a battery's per-run accuracies, without its runs
    if cfg.ladder_again is not None:
        return evaluate_ladder_result(cfg)  # a ladder's per-run losses, without its runs
    if cfg.experiment is not None and is_battery(cfg.runs_dir, cfg.experiment):
        return evaluate_battery(cfg, cfg.experiment)  # tasks x cells; ladder names match too
    if cfg.experiment is not None and is_ladder(cfg.runs_dir, cfg.experiment):
        return evaluate_ladder(cfg, cfg.experiment)  # a family of experiments, one per rung and rate
    requested = set(cfg.outputs)  # their previous files go, even those a synthetic task cannot make
    cfg, no_tokenizer = without_text_outputs(cfg)
    needs_models = bool(set(MODEL_OUTPUTS) & set(cfg.outputs))
    exp = load_experiment(cfg.runs_dir, cfg.experiment, cfg.baseline, cfg.allow_mixed_data,
                          checkpoint=cfg.checkpoint if needs_models else None)
    check_reference_variant(cfg.baseline, exp.variants)
    out = cfg.output_path(exp.name)
    if out.resolve() == Path(cfg.runs_dir).resolve():
        raise ValueError(f"output directory {out} is the runs directory; set output_dir=<another path>")
    not_produced: list[str] = [no_tokenizer] if no_tokenizer else []  # outputs (or parts) left out, and why

    def leave_out(message: str) -> None:
        log.warning(message)
        not_produced.append(message)

    chosen: list[RunDir] = []  # one run per variant for samples and heatmaps
    if {"samples", "heatmaps"} & set(cfg.outputs):
        chosen = representative_runs(exp, cfg.model_seed)
        not_produced += [f"samples, heatmaps: variant {v!r} has no evaluable run with model_seed={cfg.model_seed}"
                         for v in exp.variants if v not in {r.variant for r in chosen}]
        # Before minutes of tables and figures, and before the output directory is made, not after.
        check_prompts_fit(chosen, cfg)
        if "heatmaps" in cfg.outputs:
            check_heatmap_layers(chosen, cfg.heatmap_layers)
    out.mkdir(parents=True, exist_ok=True)
    before = prepare_outputs(out)
    log.info("evaluating experiment %r (%d runs, %d skipped) into %s", exp.name, len(exp.runs),
             len(exp.skipped), out)
    if "tables" in cfg.outputs:
        reason = comparison_skipped(exp.variants, cfg.baseline)
        if reason is not None:
            leave_out(f"vs_baseline: {reason}")
        write_tables(exp, out / "tables", cfg.baseline, cfg.confidence, cfg.alpha, cfg.power,
                     cfg.bootstrap_resamples, cfg.bootstrap_seed)
    if "figures" in cfg.outputs:
        if not any(p.stem == "induction_vs_tokens" for p in write_figures(exp, out / "figures", cfg.confidence)):
            leave_out("figures/induction_vs_tokens: no run logged heads/induction_max (runs trained before "
                      "HeadScoresCallback existed)")
    loaded: dict[Path, tuple[GPT, Tokenizer] | None] = {}

    def load(run: RunDir, checkpoint: str, device: str) -> tuple[GPT, Tokenizer] | None:
        # Samples, heatmaps and statistics share the representative models; other seeds load once.
        # A checkpoint that passed the checks but does not load is named and left out (None).
        if run.path not in loaded:
            try:
                model_and_tokenizer = load_run(run, checkpoint, device)
            except (OSError, ValueError, RuntimeError) as err:
                leave_out(f"{run_name(run)}: checkpoints/{checkpoint}.ckpt does not load ({err}); "
                          f"left out of every output that needs its model")
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
            reason = comparison_skipped(exp.variants, cfg.baseline)
            if reason is not None:  # no reference runs, or nothing besides it: no difference maps
                leave_out(f"difference heatmaps: {reason}")
            else:
                for message in save_difference_heatmaps(maps, cfg.baseline, out / "heatmaps", cfg.heatmap_layers)[1]:
                    leave_out(message)
        else:
            leave_out("heatmaps: no model could be loaded")
    measures = {"attention_stats": _attention_statistics_measure(cfg.prompts),
                "head_scores": _head_scores_measure(cfg, leave_out),
                "loss_by_position": _loss_by_position_measure(cfg, leave_out)}
    measures = {name: measure for name, measure in measures.items() if name in cfg.outputs}
    measured = measure_runs(exp.runs, measures, cfg.checkpoint, cfg.device, load) if measures else {}
    for name, frame in measured.items():
        if frame.empty:
            leave_out(f"{name}: no model could be loaded" + (" or no run's validation data could be read"
                                                             if name == "loss_by_position" else ""))
    if not measured.get("attention_stats", pd.DataFrame()).empty:
        per_run = measured["attention_stats"]
        (out / "tables").mkdir(parents=True, exist_ok=True)
        per_run.to_csv(out / "tables" / "attention_stats_per_run.csv", index=False)
        write_attention_stats(maps_lib.summarize_statistics(per_run), out, cfg.prompts, exp.notes)
    if not measured.get("head_scores", pd.DataFrame()).empty:
        write_head_scores(measured["head_scores"], out, exp.variants, cfg, exp.notes)
    if not measured.get("loss_by_position", pd.DataFrame()).empty:
        losses = measured["loss_by_position"]
        losses.to_csv(out / "loss_by_position.csv", index=False)
        save_figure(loss_by_position_figure(losses, exp.variants, cfg.confidence), out / "figures", "loss_by_position")

    record = {"experiment": exp.name, "config": dataclasses.asdict(cfg),
              "runs": [str(r.path) for r in exp.runs],
              "skipped_runs": [{"run": name, "reasons": reasons} for name, reasons in exp.skipped.items()],
              "not_produced": not_produced, "notes": exp.notes,
              "outputs": before.finish(redone=redone_by(requested))}
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


def write_head_scores(frame: pd.DataFrame, out_dir: Path, variants: Sequence[str], cfg: EvaluateConfig,
                      notes: Sequence[str] = ()) -> list[Path]:
    """``head_scores.csv`` (every run, layer and head), ``head_scores.md`` (per variant: the run
    summaries over seeds, then every layer and head averaged over seeds) and its figure."""
    csv_path, md_path = out_dir / "head_scores.csv", out_dir / "head_scores.md"
    frame.to_csv(csv_path, index=False)
    per_run = summarize_head_scores(frame)
    summary_rows = []
    for variant in variants:
        runs = per_run[per_run["variant"] == variant]
        if runs.empty:
            continue
        row = {"variant": variant, "seeds": len(runs)}
        for column in per_run.columns[2:]:
            interval = mean_ci(runs[column], cfg.confidence)
            spread = "" if interval.half_width is None else f" ± {interval.half_width:.3f}"
            row[column] = f"{interval.mean:.3f}{spread}"
        summary_rows.append(row)
    grouped = frame.groupby(["variant", "layer", "head"], sort=False)
    heads = grouped[list(SCORES)].mean()
    heads.insert(0, "seeds", grouped["seed"].nunique())
    heads = heads.reset_index()
    for column in SCORES:
        heads[column] = heads[column].map(lambda v: "–" if pd.isna(v) else f"{v:.3f}")
    lengths = ", ".join(str(n) for n in sorted(frame["segment_len"].unique()))
    header = ["# Head scores", "",
              f"Probe: {cfg.head_probe_sequences} sequences of `<s>` + a segment of L = {lengths} distinct random "
              f"token ids (no special ids; seed {cfg.head_probe_seed}) + the same segment again. Definitions, "
              "including those for weights that are not softmax probabilities (sigmoid, sink, mixed, "
              "differential): `attnlab/analysis/head_scores.py`.", "",
              "induction: weight from each query of the second copy to the key after its token's first "
              "occurrence (1 = a perfect induction head); prev_token: weight on the previous key; sink: weight "
              "on `<s>`; entropy (nats), entropy_norm and distance (look-back in tokens) of each row normalised "
              "by its absolute mass; row_mass / abs_mass: the row's sum of weights / of their absolute values "
              "(1 for softmax). diff_attn's heads are its n_head / 2 differential heads.", "",
              f"## Per variant (per run over every layer and head, then mean ± {cfg.confidence:.0%} CI over seeds)",
              "", markdown(pd.DataFrame(summary_rows)),
              "## Per layer and head (mean over seeds)", ""]
    md_path.write_text("\n".join(header) + "\n" + markdown(heads) + "".join(f"\n> {n}\n" for n in notes),
                       encoding="utf-8")
    return [csv_path, md_path, *save_figure(head_scores_figure(frame, variants), out_dir / "figures", "head_scores")]

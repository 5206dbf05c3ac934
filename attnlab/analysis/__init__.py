"""Analysis of finished runs: tables, figures, samples, attention heatmaps and statistics.

``evaluate.py`` and the notebooks call the same functions:

    exp = load_experiment("results/runs", "demo")          # pipeline
    write_tables(exp, out / "tables")                      # tables: md, csv, tex
    loss_curve_figure(validation_curves(exp.runs), exp.variants)   # figures
    maps = attention_maps(model, tokenizer, prompt, variant, seed) # attention_maps
    save_heatmaps([maps, ...], out / "heatmaps")           # heatmaps
"""

from attnlab.analysis.maps import (AttentionMaps, attention_maps, attention_statistics,
                                             summarize_statistics)
from attnlab.analysis.config import EvaluateConfig
from attnlab.analysis.figures import final_loss_figure, loss_curve_figure, throughput_figure, validation_curves
from attnlab.analysis.heatmaps import heatmap_figure, save_heatmaps, variant_grid_figure
from attnlab.analysis.pipeline import (Experiment, evaluate, load_experiment, load_run, representative_runs,
                                       write_figures, write_tables)
from attnlab.analysis.samples import DEFAULT_PROMPTS, sample_model, write_samples
from attnlab.analysis.stats import mean_ci, welch_test
from attnlab.analysis.style import save_figure, use_style

__all__ = [
    "DEFAULT_PROMPTS", "AttentionMaps", "EvaluateConfig", "Experiment", "attention_maps", "attention_statistics",
    "evaluate", "final_loss_figure", "heatmap_figure", "load_experiment", "load_run", "loss_curve_figure",
    "mean_ci", "representative_runs", "sample_model", "save_figure", "save_heatmaps", "summarize_statistics",
    "throughput_figure", "use_style", "validation_curves", "variant_grid_figure", "welch_test", "write_figures",
    "write_samples", "write_tables",
]

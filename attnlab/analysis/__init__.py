"""Analysis of finished runs: tables, figures, samples, attention heatmaps and statistics.

``evaluate.py`` and the notebooks call the same functions:

    exp = load_experiment("results/runs", "demo")          # pipeline
    write_tables(exp, out / "tables")                      # tables: md, csv, tex
    loss_curve_figure(validation_curves(exp.runs), exp.variants)   # figures
    maps = attention_maps(model, tokenizer, prompt, variant, seed) # attention_maps
    save_heatmaps([maps, ...], out / "heatmaps")           # heatmaps
    model_head_scores(model, repeated_random_tokens(8, 32, vocab), 32)  # head_scores

The names below are imported on first use (PEP 562), so that importing one light module
(``attnlab.analysis.head_scores``, which the training callback uses) does not load
matplotlib, scipy and the rest of the package.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "attnlab.analysis.maps": ("AttentionMaps", "attention_maps", "attention_statistics", "summarize_statistics"),
    "attnlab.analysis.config": ("EvaluateConfig",),
    "attnlab.analysis.figures": ("final_loss_figure", "head_scores_figure", "induction_curve_figure",
                                 "logged_curves", "loss_by_position_figure", "loss_curve_figure",
                                 "throughput_figure", "validation_curves"),
    "attnlab.analysis.head_scores": ("head_scores", "model_head_scores", "repeated_random_tokens"),
    "attnlab.analysis.heatmaps": ("difference_figure", "heatmap_figure", "save_difference_heatmaps",
                                  "save_heatmaps", "variant_grid_figure"),
    "attnlab.analysis.pipeline": ("Experiment", "evaluate", "load_experiment", "load_run", "representative_runs",
                                  "write_figures", "write_tables"),
    "attnlab.analysis.position_loss": ("loss_by_position", "validation_windows"),
    "attnlab.analysis.samples": ("DEFAULT_PROMPTS", "sample_model", "write_samples"),
    "attnlab.analysis.stats": ("mean_ci", "welch_test"),
    "attnlab.analysis.style": ("save_figure", "use_style"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})

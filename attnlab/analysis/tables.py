"""Result tables from finished runs: per run, aggregated over seeds, and tests against the baseline.

Every table is built as numbers first (written to CSV as is) and formatted
once for Markdown and LaTeX, so the three files never disagree. Numbers come
only from each run's ``summary.json`` (read through ``attnlab.runs``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from attnlab.analysis.stats import mean_ci, welch_test
from attnlab.runs import RunDir

# summary.json key -> (column label, decimals); the order is the tables' column order.
METRICS: dict[str, tuple[str, int]] = {
    "final_train_loss": ("final train loss", 4),
    "final_val_loss": ("final val loss", 4),
    "best_val_loss": ("best val loss", 4),
    "final_val_ppl": ("val ppl", 2),
    "wall_time_s": ("wall time (s)", 1),
    "tokens_per_s": ("tokens/s", 0),
}
TESTED_METRICS = ("final_val_loss", "best_val_loss")
# Settings that must be equal for a fair comparison; a difference is reported, not hidden.
DATA_KEYS = ("data_source", "tokenizer_sha256")
SETUP_KEYS = ("preset", "max_steps", "seq_len", "batch_size", "accumulate_grad_batches", "lr")


@dataclass
class Table:
    """Numbers (for CSV) and their display form (for Markdown/LaTeX), plus notes shown under it."""

    name: str
    numbers: pd.DataFrame
    display: pd.DataFrame
    notes: list[str] = field(default_factory=list)

    def to_markdown(self) -> str:
        notes = "".join(f"\n> {note}\n" for note in self.notes)
        return markdown(self.display) + notes

    def to_latex(self) -> str:
        escaped = self.display.map(latex_escape).rename(columns=latex_escape)
        caption = " ".join(latex_escape(n) for n in self.notes) or None
        return escaped.to_latex(index=False, escape=False, caption=caption, label=f"tab:{self.name}")

    def write(self, out_dir: Path) -> list[Path]:
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = [out_dir / f"{self.name}.{ext}" for ext in ("csv", "md", "tex")]
        self.numbers.to_csv(paths[0], index=False)
        paths[1].write_text(self.to_markdown(), encoding="utf-8")
        paths[2].write_text(self.to_latex(), encoding="utf-8")
        return paths


def markdown(frame: pd.DataFrame) -> str:
    """A GitHub Markdown table (pandas' ``to_markdown`` would add a dependency for 5 lines)."""
    def cell(value) -> str:
        return str(value).replace("|", r"\|")

    lines = ["| " + " | ".join(cell(c) for c in frame.columns) + " |",
             "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def latex_escape(value) -> str:
    text = str(value)
    for char, escaped in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("#", r"\#"),
                          ("_", r"\_"), ("{", r"\{"), ("}", r"\}"), ("±", r"$\pm$")):
        text = text.replace(char, escaped)
    return text


def variant_order(variants: Sequence[str], baseline: str = "baseline") -> list[str]:
    """The baseline first, then the others alphabetically: every table and figure uses this order."""
    unique = sorted(set(variants))
    return ([baseline] if baseline in unique else []) + [v for v in unique if v != baseline]


def runs_frame(runs: Sequence[RunDir], baseline: str = "baseline") -> pd.DataFrame:
    """One row per finished run with every number the tables use, straight from summary.json."""
    rows = []
    for run in runs:
        s = run.load_summary()
        data = s.get("data", {})
        rows.append({
            "variant": run.variant, "seed": run.seed,
            "parameters": s["parameters"]["total"],
            "extra_parameters": s["parameters"].get("extra_vs_baseline"),
            "steps": s.get("steps"), "tokens_seen": s.get("tokens_seen"),
            **{key: s.get(key) for key in METRICS},
            "data_source": data.get("source"), "tokenizer_sha256": data.get("tokenizer_sha256"),
            **{key: s.get(key) for key in SETUP_KEYS},
            "device": s.get("device"), "run_dir": str(run.path),
        })
    frame = pd.DataFrame(rows)
    order = {v: i for i, v in enumerate(variant_order(frame["variant"], baseline))}
    return frame.sort_values(["variant", "seed"], key=lambda c: c.map(order) if c.name == "variant" else c,
                             ignore_index=True)


def comparability_notes(frame: pd.DataFrame, allow_mixed_data: bool = False) -> list[str]:
    """Warnings for runs that differ in data or setup; different data is an error unless allowed."""
    notes = []
    data_groups = frame.groupby(list(DATA_KEYS), dropna=False)
    if data_groups.ngroups > 1:
        described = "; ".join(
            f"source={src}, tokenizer {str(sha)[:12]}: "
            + ", ".join(f"{v}/seed{s}" for v, s in zip(g["variant"], g["seed"]))
            for (src, sha), g in data_groups)
        message = f"runs were trained on different data or tokenizers ({described})"
        if not allow_mixed_data:
            raise ValueError(f"{message}; their losses are not comparable. Evaluate one experiment "
                             f"trained on one dataset, or pass allow_mixed_data=true to tabulate "
                             f"them anyway with a warning")
        notes.append(f"WARNING: {message}; losses are not comparable across these groups.")
    for key in SETUP_KEYS:
        values = frame[key].dropna().unique()
        if len(values) > 1:
            per_variant = frame.groupby("variant")[key].unique()
            detail = ", ".join(f"{v}: {'/'.join(map(str, vals))}" for v, vals in per_variant.items())
            notes.append(f"WARNING: runs differ in {key} ({detail}).")
    return notes


def _fmt(value, decimals: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:,.{decimals}f}"


def _fmt_difference(value: float) -> str:
    # Differences far below the loss's fourth decimal would print as a signed zero.
    return f"{value:+.2e}" if 0 < abs(value) < 5e-5 else f"{value:+.4f}"


def per_run_table(frame: pd.DataFrame, notes: Sequence[str] = ()) -> Table:
    columns = ["variant", "seed", "parameters", "tokens_seen", *METRICS]
    numbers = frame[columns].copy()
    display = pd.DataFrame({"variant": frame["variant"], "seed": frame["seed"],
                            "parameters": frame["parameters"].map(lambda v: _fmt(v, 0)),
                            "tokens seen": frame["tokens_seen"].map(lambda v: _fmt(v, 0))})
    for key, (label, decimals) in METRICS.items():
        display[label] = frame[key].map(lambda v, d=decimals: _fmt(v, d))
    return Table("per_run", numbers, display, list(notes))


def aggregate_table(frame: pd.DataFrame, confidence: float = 0.95, notes: Sequence[str] = ()) -> Table:
    """Per variant: n and, for every metric, mean and Student-t interval half-width over seeds."""
    number_rows, display_rows = [], []
    single = False
    for variant, group in frame.groupby("variant", sort=False):
        numbers = {"variant": variant, "n": len(group), "seeds": " ".join(map(str, group["seed"])),
                   "parameters": int(group["parameters"].iloc[0])}
        display = {"variant": variant, "n": len(group), "parameters": _fmt(numbers["parameters"], 0)}
        for key, (label, decimals) in METRICS.items():
            interval = mean_ci(group[key], confidence)
            numbers[f"{key}_mean"] = interval.mean
            numbers[f"{key}_ci"] = interval.half_width if interval.half_width is not None else math.nan
            if interval.half_width is None:
                single = single or interval.n == 1
                shown = _fmt(interval.mean, decimals) + (" (n=1)" if interval.n == 1 else "")
            else:
                shown = f"{_fmt(interval.mean, decimals)} ± {_fmt(interval.half_width, decimals)}"
            display[label] = shown
        number_rows.append(numbers)
        display_rows.append(display)
    header = [f"mean ± {confidence:.0%} confidence interval (Student t, n-1 degrees of freedom) over seeds."]
    if single:
        header.append("n=1: a single run has no interval; train more seeds (seed=0,1,2) for one.")
    return Table("aggregate", pd.DataFrame(number_rows), pd.DataFrame(display_rows),
                 header + list(notes))


def baseline_tests_table(frame: pd.DataFrame, baseline: str = "baseline", alpha: float = 0.05,
                         metrics: Sequence[str] = TESTED_METRICS, notes: Sequence[str] = ()) -> Table:
    """Welch's t-test of every variant against the baseline, per metric (lower loss is better)."""
    variants = list(dict.fromkeys(frame["variant"]))
    if baseline not in variants:
        raise ValueError(f"baseline {baseline!r} has no finished runs in this experiment; "
                         f"variants present: {', '.join(variants)}")
    reference = frame[frame["variant"] == baseline]
    number_rows, display_rows = [], []
    for variant in variants:
        if variant == baseline:
            continue
        group = frame[frame["variant"] == variant]
        for key in metrics:
            test = welch_test(group[key], reference[key])
            significant = test.significant(alpha)
            number_rows.append({"variant": variant, "metric": key, "n": test.n_a, "n_baseline": test.n_b,
                                "difference": test.difference, "t": test.t, "df": test.df,
                                "p_value": test.p_value, "significant": significant})
            if test.p_value is None:
                p_text = "n/a"
                verdict = f"n/a (needs n>=2 per side, has {test.n_a} / {test.n_b})"
            else:
                p_text = f"{test.p_value:.3g}"
                verdict = "yes" if significant else "no"
            display_rows.append({"variant": variant, "metric": METRICS[key][0],
                                 "n (variant / baseline)": f"{test.n_a} / {test.n_b}",
                                 f"difference vs {baseline}": _fmt_difference(test.difference),
                                 "p (Welch t)": p_text, f"significant (p < {alpha:g})": verdict})
    display_columns = ["variant", "metric", "n (variant / baseline)", f"difference vs {baseline}",
                       "p (Welch t)", f"significant (p < {alpha:g})"]
    number_columns = ["variant", "metric", "n", "n_baseline", "difference", "t", "df", "p_value",
                      "significant"]
    header = [f"Welch's two-sided t-test of each variant's runs against {baseline}'s; "
              f"difference = variant mean - {baseline} mean (negative: lower loss)."]
    return Table("vs_baseline", pd.DataFrame(number_rows, columns=number_columns),
                 pd.DataFrame(display_rows, columns=display_columns),
                 header + list(notes))

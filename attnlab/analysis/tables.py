"""Result tables from finished runs: per run, aggregated over seeds, and tests against the baseline.

Every table is built as numbers first (written to CSV as is) and formatted
once for Markdown and LaTeX, so the three files never disagree. Numbers come
from each run's ``summary.json`` (read through ``attnlab.runs``), or from an
evaluation directory's ``tables/per_run.csv`` that stands in for the runs
(``read_evaluation_dir``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from attnlab.analysis.stats import Comparison, compare, holm, mean_ci
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
# Metrics only some runs have (final_val_acc: synthetic tasks); a column appears when a run has it.
OPTIONAL_METRICS: dict[str, tuple[str, int]] = {"final_val_acc": ("final val acc", 4)}
TESTED_METRICS = ("final_val_loss", "best_val_loss")
# Settings that must be equal for a fair comparison; a difference is reported, not hidden.
DATA_KEYS = ("data_source", "tokenizer_sha256")
SETUP_KEYS = ("preset", "max_steps", "seq_len", "batch_size", "accumulate_grad_batches", "world_size", "val_batches",
              "lr")


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
                          ("_", r"\_"), ("{", r"\{"), ("}", r"\}"), ("±", r"$\pm$"),
                          ("×", r"$\times$"), ("<", r"\textless{}"), (">", r"\textgreater{}")):
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
            "params_matched": s.get("params_matched", False),
            "flops_per_token": s.get("flops_per_token"),
            "steps": s.get("steps"), "tokens_seen": s.get("tokens_seen"),
            **{key: s.get(key) for key in METRICS},
            **{key: s[key] for key in OPTIONAL_METRICS if key in s},
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
    return notes + parameter_notes(frame) + setup_notes(frame)


def check_reference_variant(baseline: str, present: Iterable[str]) -> None:
    """Refuse a reference variant that is neither among the runs' nor registered: a typo, which would
    leave every table without its differences. A registered variant without runs is a note (no
    comparison), and the runs of a variant removed since may still be the reference."""
    from variants import available_variants  # here, not at import: evaluate.py's schema stays light

    present = sorted(set(present))
    if baseline in present or baseline in available_variants():
        return
    raise ValueError(f"baseline={baseline!r} is neither a variant of these runs ({', '.join(present)}) nor a "
                     f"registered one ({', '.join(available_variants())})")


def setup_notes(frame: pd.DataFrame, where: str = "") -> list[str]:
    """A warning per ``SETUP_KEYS`` setting the runs of ``frame`` differ in (a run lacking it is not
    counted), with each variant's values; ``where`` says which runs, e.g. a battery's cell."""
    notes = []
    for key in SETUP_KEYS:
        if key not in frame or len(frame[key].dropna().unique()) < 2:
            continue
        per_variant = frame.groupby("variant")[key].unique()
        detail = ", ".join(f"{v}: {'/'.join(map(str, vals))}" for v, vals in per_variant.items())
        notes.append(f"WARNING: {where}runs differ in {key} ({detail}).")
    return notes


PARAMETER_GAP = 0.01  # unmatched runs further apart than this carry a note


def parameter_notes(frame: pd.DataFrame) -> list[str]:
    """A visible note when unmatched runs differ in size by more than ``PARAMETER_GAP``: a loss
    difference between them may be the parameters, not the attention change."""
    notes = []
    sizes_per_variant = frame.groupby("variant", sort=False)["parameters"].unique()
    for variant, sizes in sizes_per_variant.items():
        if len(sizes) > 1:  # the tables show one size per variant
            notes.append(f"WARNING: the runs of {variant} differ in parameter count "
                         f"({' / '.join(f'{n:,}' for n in sorted(sizes))}): a model setting differs between them.")
    unmatched = frame[~frame["params_matched"].astype(bool)]
    if unmatched.empty:
        return notes
    sizes = unmatched.groupby("variant", sort=False)["parameters"].first()
    smallest = sizes.min()
    larger = {v: n for v, n in sizes.items() if (n - smallest) / smallest > PARAMETER_GAP}
    if not larger:
        return notes
    detail = ", ".join(f"{v} {n:,} (+{(n - smallest) / smallest:.1%})" for v, n in larger.items())
    return notes + [f"NOTE: unmatched parameter counts differ by more than {PARAMETER_GAP:.0%} (smallest "
                    f"{smallest:,}; {detail}); train with model.match_params=true to compare at equal size."]


def _fmt(value, decimals: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:,.{decimals}f}"


def _yes_no(value) -> str:
    return "yes" if bool(value) else "no"


def _mega(value):
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value / 1e6


def _fmt_difference(value: float) -> str:
    # Differences far below the loss's fourth decimal would print as a signed zero.
    return f"{value:+.2e}" if 0 < abs(value) < 5e-5 else f"{value:+.4f}"


def table_metrics(frame: pd.DataFrame) -> dict[str, tuple[str, int]]:
    """``METRICS``, plus (after val ppl) the ``OPTIONAL_METRICS`` that some run of ``frame`` has."""
    present = [key for key in OPTIONAL_METRICS if key in frame and frame[key].notna().any()]
    keys = list(METRICS)
    at = keys.index("final_val_ppl") + 1
    return {key: {**METRICS, **OPTIONAL_METRICS}[key] for key in keys[:at] + present + keys[at:]}


def per_run_table(frame: pd.DataFrame, notes: Sequence[str] = ()) -> Table:
    metrics = table_metrics(frame)
    columns = ["variant", "seed", "parameters", "params_matched", "flops_per_token", "tokens_seen", *metrics]
    numbers = frame[columns].copy()
    display = pd.DataFrame({"variant": frame["variant"], "seed": frame["seed"],
                            "parameters": frame["parameters"].map(lambda v: _fmt(v, 0)),
                            "matched": frame["params_matched"].map(_yes_no),
                            "MFLOP/token": frame["flops_per_token"].map(lambda v: _fmt(_mega(v), 2)),
                            "tokens seen": frame["tokens_seen"].map(lambda v: _fmt(v, 0))})
    for key, (label, decimals) in metrics.items():
        display[label] = frame[key].map(lambda v, d=decimals: _fmt(v, d))
    return Table("per_run", numbers, display, list(notes))


def aggregate_table(frame: pd.DataFrame, confidence: float = 0.95, notes: Sequence[str] = ()) -> Table:
    """Per variant: n and, for every metric, mean and Student-t interval half-width over seeds."""
    metrics = table_metrics(frame)
    number_rows, display_rows = [], []
    single = False
    for variant, group in frame.groupby("variant", sort=False):
        numbers = {"variant": variant, "n": len(group), "seeds": " ".join(map(str, group["seed"])),
                   "parameters": int(group["parameters"].iloc[0]),
                   "params_matched": bool(group["params_matched"].iloc[0]),
                   "flops_per_token": group["flops_per_token"].iloc[0]}
        display = {"variant": variant, "n": len(group), "parameters": _fmt(numbers["parameters"], 0),
                   "matched": _yes_no(numbers["params_matched"]),
                   "MFLOP/token": _fmt(_mega(numbers["flops_per_token"]), 2)}
        for key, (label, decimals) in metrics.items():
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


def _fmt_interval(low: float | None, high: float | None) -> str:
    return "–" if low is None or high is None else f"[{_fmt_difference(low)}, {_fmt_difference(high)}]"


def _fmt_p(p: float | None) -> str:
    return "n/a" if p is None or math.isnan(p) else f"{p:.3g}"


def _test_label(c: Comparison) -> str:
    if c.test == "paired":
        return f"paired t (n={c.n_pairs} seeds)"
    return f"Welch t (n={c.n} / {c.n_reference})"


COMPARISON_COLUMNS = ["variant", "metric", "test", "n", "n_baseline", "n_pairs", "paired_seeds", "difference",
                      "ci_low", "ci_high", "bootstrap_low", "bootstrap_high", "t", "df", "p_value", "p_holm",
                      "significant", "baseline_sd", "sd_difference", "sd_difference_assumed", "mdd"]


def comparison_skipped(variants: Sequence[str], baseline: str) -> str | None:
    """Why no variant can be compared with ``baseline`` here, or None when some can."""
    if baseline not in variants:
        return (f"No comparison: the reference variant {baseline!r} has no evaluable runs in this experiment "
                f"(variants present: {', '.join(variants) or 'none'}); pass baseline=<variant> to compare "
                f"against one of them.")
    if len(set(variants)) < 2:
        return f"No comparison: {baseline!r} is the only variant with evaluable runs in this experiment."
    return None


def baseline_tests_table(frame: pd.DataFrame, baseline: str = "baseline", alpha: float = 0.05,
                         metrics: Sequence[str] = TESTED_METRICS, notes: Sequence[str] = (),
                         confidence: float = 0.95, power: float = 0.8, resamples: int = 10_000,
                         bootstrap_seed: int = 0) -> Table:
    """Every variant against ``baseline`` per metric (lower loss is better), Holm-corrected.

    Paired by seed where a variant shares >= 2 seeds with the baseline, else Welch (see
    ``attnlab.analysis.stats.compare``). Without baseline runs, or without another variant,
    the table has no rows and a note saying why.
    """
    variants = list(dict.fromkeys(frame["variant"]))
    c = f"{confidence:.0%}"
    display_columns = ["variant", "metric", "test", f"difference vs {baseline}", f"{c} CI (t)",
                       f"{c} CI (bootstrap)", "p", "p (Holm)", f"significant (Holm p < {alpha:g})",
                       f"MDD (power {power:g})", f"{baseline} seed sd"]
    skipped = comparison_skipped(variants, baseline)
    if skipped is not None:
        return Table("vs_baseline", pd.DataFrame(columns=COMPARISON_COLUMNS),
                     pd.DataFrame(columns=display_columns), [skipped, *notes])
    reference = frame[frame["variant"] == baseline]
    rows: list[tuple[str, str, Comparison]] = []
    for key in metrics:
        for variant in variants:
            if variant != baseline:
                group = frame[frame["variant"] == variant]
                rows.append((variant, key, compare(dict(zip(group["seed"], group[key])),
                                                   dict(zip(reference["seed"], reference[key])),
                                                   confidence, alpha, power, resamples, bootstrap_seed)))
    # Holm per metric: the family is the variants compared with the baseline on that metric.
    adjusted = {}
    for key in metrics:
        family = [(v, cmp) for v, k, cmp in rows if k == key]
        adjusted |= {(v, key): p for (v, _), p in zip(family, holm([cmp.p_value for _, cmp in family]))}
    rows.sort(key=lambda row: (variants.index(row[0]), metrics.index(row[1])))
    number_rows, display_rows = [], []
    for variant, key, cmp in rows:
        p_holm = adjusted[(variant, key)]
        significant = None if p_holm is None else p_holm < alpha
        number_rows.append({
            "variant": variant, "metric": key, "test": cmp.test, "n": cmp.n, "n_baseline": cmp.n_reference,
            "n_pairs": cmp.n_pairs, "paired_seeds": " ".join(map(str, cmp.seeds)),
            "difference": cmp.difference, "ci_low": cmp.low, "ci_high": cmp.high,
            "bootstrap_low": cmp.bootstrap_low, "bootstrap_high": cmp.bootstrap_high, "t": cmp.t, "df": cmp.df,
            "p_value": cmp.p_value, "p_holm": p_holm, "significant": significant,
            "baseline_sd": cmp.sd_reference, "sd_difference": cmp.sd_difference,
            "sd_difference_assumed": cmp.sd_difference_assumed, "mdd": cmp.mdd})
        if significant is None:
            verdict = f"n/a (needs n>=2 per side, has {cmp.n} / {cmp.n_reference})"
        else:
            verdict = "yes" if significant else "no"
        mdd = _fmt(cmp.mdd, 4) + (" (assumed sd)" if cmp.mdd is not None and cmp.sd_difference_assumed else "")
        display_rows.append(dict(zip(display_columns, [
            variant, METRICS[key][0], _test_label(cmp), _fmt_difference(cmp.difference),
            _fmt_interval(cmp.low, cmp.high), _fmt_interval(cmp.bootstrap_low, cmp.bootstrap_high),
            _fmt_p(cmp.p_value), _fmt_p(p_holm), verdict, mdd, _fmt(cmp.sd_reference, 4)])))
    header = comparison_notes(baseline, confidence, alpha, power, resamples, bootstrap_seed,
                              tests={cmp.test for _, _, cmp in rows})
    return Table("vs_baseline", pd.DataFrame(number_rows, columns=COMPARISON_COLUMNS),
                 pd.DataFrame(display_rows, columns=display_columns), header + list(notes))


def comparison_notes(baseline: str, confidence: float, alpha: float, power: float, resamples: int,
                     bootstrap_seed: int, tests: set[str]) -> list[str]:
    """What the columns of the comparison table are, with the formulas."""
    c = f"{confidence:.0%}"
    notes = [f"Each variant against {baseline}, per metric; difference = variant - {baseline} "
             f"(negative: lower loss)."]
    if "paired" in tests:
        notes.append(f"paired t: the variant shares >= 2 seeds with {baseline} (same seed: same data order and "
                     f"initialisation of the shared parameters), so only those seeds are used, as pairs: "
                     f"d = variant - {baseline} per seed, t = mean(d) / (sd(d) / sqrt(n)), n - 1 degrees of "
                     f"freedom; {c} CI (t) = mean(d) ± t_{{(1+c)/2, n-1}} × sd(d) / sqrt(n); {c} CI (bootstrap) = "
                     f"percentile interval of mean(d) over {resamples:,} resamples of the seed pairs "
                     f"(RNG seed {bootstrap_seed}; with few seeds it is narrower than the t interval).")
    if "welch" in tests:
        notes.append(f"Welch t: fewer than 2 shared seeds, so every seed of both sides, unpaired "
                     f"(Welch's unequal-variance t-test; {c} CI (t) with Welch-Satterthwaite degrees of "
                     f"freedom; no bootstrap).")
    notes.append(f"p: two-sided; p (Holm): Holm's step-down adjustment over the variants compared with {baseline} "
                 f"on the same metric (those with a p-value); significant: Holm p < {alpha:g}.")
    notes.append(f"MDD: the smallest true difference a two-sided paired t-test at alpha = {alpha:g} detects with "
                 f"power {power:g} at the current n: "
                 f"MDD = (t_{{1-alpha/2, n-1}} + t_{{power, n-1}}) × sd_diff / sqrt(n), "
                 f"with sd_diff the observed sd of the paired differences"
                 + (f"; Welch rows (\"assumed sd\"): sd_diff unknown, assumed = {baseline} seed sd × sqrt(2) "
                    f"(two independent runs), n = the smaller seed count" if "welch" in tests else "")
                 + f". {baseline} seed sd: its seed-to-seed standard deviation (n - 1 denominator), the noise "
                   f"floor; differences below the MDD are not resolved by these seeds.")
    return notes


def read_evaluation_dir(result_dir: str | Path, setting: str, kind: str,
                        required: Sequence[str]) -> tuple[Path, dict]:
    """``tables/per_run.csv`` and the parsed ``evaluation.json`` of an evaluation directory that
    stands in for its runs (``ladder_result=``, ``battery_result=``), or an error naming
    ``setting`` when it is not a ``kind``'s (its evaluation.json lacks a ``required`` key)."""
    result_dir = Path(result_dir)
    per_run, evaluation = result_dir / "tables" / "per_run.csv", result_dir / "evaluation.json"
    missing = [str(p) for p in (per_run, evaluation) if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{setting}={str(result_dir)!r} is not a {kind}'s evaluation directory: "
                                f"{', '.join(missing)} missing (python evaluate.py experiment=<{kind}> writes them)")
    meta = json.loads(evaluation.read_text(encoding="utf-8"))
    absent = [key for key in required if key not in meta]
    if absent:  # another evaluation's output, e.g. a battery's for a ladder
        raise ValueError(f"{setting}={str(result_dir)!r} is not a {kind}'s evaluation directory: its "
                         f"evaluation.json names no {kind} ({', '.join(absent)} missing; python evaluate.py "
                         f"experiment=<{kind}> writes it)")
    return per_run, meta

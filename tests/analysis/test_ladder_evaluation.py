"""``evaluate.py experiment=<ladder>``: learning-rate selection, per-rung comparisons, fits, figures.

The run directories hold what training writes that the ladder's evaluation reads (summary.json,
config.yaml), with losses from known curves, so the answers are known exactly.
"""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
import yaml

from attnlab.analysis.config import EvaluateConfig
from attnlab.analysis.pipeline import evaluate
from attnlab.ladder import member_name

RUNGS = {"r1": 1e12, "r2": 4e12, "r3": 1.6e13, "r4": 6.4e13}  # compute of each rung
E, A, ALPHA, K = 2.0, 2.0 * 1e12 ** 0.3, 0.3, 2.0  # the variant is baseline with 2x compute


def true_loss(variant: str, compute: float) -> float:
    return E + A * ((K if variant == "gated_attn" else 1.0) * compute) ** -ALPHA


def write_run(runs_dir, variant, rung, lr, seed, loss) -> None:
    path = runs_dir / member_name("lad", rung, lr) / variant / f"seed{seed}"
    path.mkdir(parents=True)
    tokens = 1_000_000
    (path / "summary.json").write_text(json.dumps({
        "variant": variant, "preset": rung, "lr": lr, "seed": seed, "steps": 10, "tokens_seen": tokens,
        "flops_per_token": RUNGS[rung] / tokens, "final_val_loss": loss, "params_matched": True,
        "parameters": {"total": 1000, "embedding": 100, "head": 100}}))
    (path / "config.yaml").write_text(yaml.safe_dump({"ladder": {"name": "lad", "selection_seeds": [100]}}))


def make_ladder(runs_dir, rungs=RUNGS) -> None:
    noise = {0: 0.001, 1: -0.001, 2: 0.0}
    for variant in ("baseline", "gated_attn"):
        for rung, compute in rungs.items():
            best = 4e-3 if variant == "gated_attn" else 2e-3
            for lr in (2e-3, 4e-3):  # the selection seed: the better rate has the lower loss
                write_run(runs_dir, variant, rung, lr, 100, true_loss(variant, compute) + (0 if lr == best else 0.1))
            for seed, offset in noise.items():
                write_run(runs_dir, variant, rung, best, seed, true_loss(variant, compute) + offset)
            # a comparison-seed run at the rate not chosen, which must be left out
            write_run(runs_dir, variant, rung, 8e-3, 0, 0.0)


def test_the_ladder_evaluation_compares_at_the_chosen_rates_and_recovers_the_multiplier(tmp_path):
    runs_dir = tmp_path / "runs"
    make_ladder(runs_dir)
    out = evaluate(EvaluateConfig(experiment="lad", runs_dir=str(runs_dir), bootstrap_resamples=200))
    assert out == tmp_path / "lad"
    chosen = pd.read_csv(out / "tables" / "lr_selection.csv").set_index(["variant", "rung"])
    assert (chosen.xs("baseline")["lr"] == 2e-3).all() and (chosen.xs("gated_attn")["lr"] == 4e-3).all()
    per_rung = pd.read_csv(out / "tables" / "per_rung.csv")
    assert (per_rung["n"] == 3).all()  # seeds 0, 1, 2 at the chosen rate; not seed 100, not lr 8e-3
    assert per_rung["loss"].min() > 1.0
    gated = per_rung[per_rung["variant"] == "gated_attn"]
    assert gated["p_holm"].notna().all()
    multipliers = pd.read_csv(out / "tables" / "multipliers.csv")
    assert multipliers["multiplier"].tolist() == pytest.approx([K] * 4, rel=0.02)
    assert abs(multipliers["slope"].iloc[0]) < 0.02
    fits = pd.read_csv(out / "tables" / "fits.csv").set_index("variant")
    assert fits.loc["baseline", "alpha"] == pytest.approx(ALPHA, rel=0.05)
    assert "Chosen on the runs at seed(s) 100" in (out / "tables" / "lr_selection.md").read_text()
    assert "With 3 seed(s) the bootstrap has only 10 distinct draws" in (out / "tables" / "multipliers.md").read_text()
    for name in ("loss_vs_compute", "multiplier"):
        assert (out / "figures" / f"{name}.png").is_file() and (out / "figures" / f"{name}.pdf").is_file()
    assert "lr0.008" not in json.dumps(json.loads((out / "evaluation.json").read_text())["runs"])
    runs = pd.read_csv(out / "tables" / "per_run.csv")
    assert len(runs) == 2 * 4 * (2 + 3 + 1)  # every run: selection grid, comparison seeds, the unchosen rate
    assert {"rung", "variant", "lr", "seed", "compute", "loss"} <= set(runs.columns)


def test_a_ladder_with_too_few_rungs_is_compared_per_rung_and_says_why_it_has_no_fit(tmp_path):
    runs_dir = tmp_path / "runs"
    make_ladder(runs_dir, {k: v for k, v in list(RUNGS.items())[:3]})
    out = evaluate(EvaluateConfig(experiment="lad", runs_dir=str(runs_dir), bootstrap_resamples=50))
    text = (out / "tables" / "per_rung.md").read_text()
    assert "No scaling fit" in text and "at least 4 distinct compute values (rungs)" in text and "got 3" in text
    assert not (out / "tables" / "multipliers.csv").exists()
    assert (out / "figures" / "loss_vs_compute.png").is_file()


def test_a_ladder_evaluated_for_its_tables_alone_draws_no_figure(tmp_path):
    runs_dir = tmp_path / "runs"
    make_ladder(runs_dir)
    out = evaluate(EvaluateConfig(experiment="lad", runs_dir=str(runs_dir), bootstrap_resamples=50, outputs=["tables"]))
    assert (out / "tables" / "multipliers.csv").is_file() and not (out / "figures").exists()
    assert not [name for name in json.loads((out / "evaluation.json").read_text())["outputs"]
                if name.startswith("figures/")]


@pytest.mark.slow  # two evaluations, then three refused
def test_a_ladder_result_is_evaluated_again_without_its_runs(tmp_path):
    """``ladder_again=<dir>``: the per-run losses a ladder's evaluation wrote give the same tables with
    the runs gone (a committed reference evaluated by a newer attnlab); its own directory is never
    the output, and a battery's directory is refused naming the setting."""
    runs_dir = tmp_path / "runs"
    make_ladder(runs_dir)
    first = evaluate(EvaluateConfig(experiment="lad", runs_dir=str(runs_dir), bootstrap_resamples=200))
    shutil.rmtree(runs_dir)
    again = evaluate(EvaluateConfig(ladder_again=str(first), runs_dir=str(runs_dir), bootstrap_resamples=200,
                                    output_dir=str(tmp_path / "again")))
    tables = sorted(p.name for p in (first / "tables").iterdir())
    assert "multipliers.md" in tables and "lr_selection.md" in tables
    for table in tables:
        assert (again / "tables" / table).read_text() == (first / "tables" / table).read_text(), table
    a, b = (json.loads((d / "evaluation.json").read_text()) for d in (first, again))
    assert b["source"] == f"the ladder result {first}" and (b["runs"], b["outputs"]) == (a["runs"], a["outputs"])
    with pytest.raises(ValueError, match="output directory .* is ladder_again's own"):
        evaluate(EvaluateConfig(ladder_again=str(first), runs_dir=str(runs_dir)))
    with pytest.raises(ValueError, match="experiment='other' but ladder_again="):
        evaluate(EvaluateConfig(ladder_again=str(first), experiment="other", output_dir=str(tmp_path / "x")))
    (again / "evaluation.json").write_text(json.dumps({"battery": "bat"}))
    with pytest.raises(ValueError, match="ladder_again=.* is not a ladder's evaluation directory"):
        evaluate(EvaluateConfig(ladder_again=str(again), output_dir=str(tmp_path / "x")))


@pytest.mark.slow  # three evaluations
def test_a_variant_missing_seeds_at_a_rung_is_named_and_a_smaller_ladder_replaces_the_fits(tmp_path):
    runs_dir = tmp_path / "runs"
    make_ladder(runs_dir)
    out = evaluate(EvaluateConfig(experiment="lad", runs_dir=str(runs_dir), bootstrap_resamples=50))
    assert (out / "tables" / "multipliers.md").is_file()
    # An interrupted sweep: gated_attn's seed 2 at r4 never finished (no summary.json).
    (runs_dir / member_name("lad", "r4", 4e-3) / "gated_attn" / "seed2" / "summary.json").unlink()
    out = evaluate(EvaluateConfig(experiment="lad", runs_dir=str(runs_dir), bootstrap_resamples=50))
    text = (out / "tables" / "per_rung.md").read_text()
    assert "WARNING: seeds differ from baseline's at the same rung" in text
    assert "gated_attn at r4: seeds [0, 1] (baseline: [0, 1, 2])" in text
    # Three rungs left: no fit, and the previous evaluation's fits and multipliers go with it.
    remove_rung(runs_dir, "r4")
    out = evaluate(EvaluateConfig(experiment="lad", runs_dir=str(runs_dir), bootstrap_resamples=50))
    assert "No scaling fit" in (out / "tables" / "per_rung.md").read_text()
    assert not (out / "tables" / "multipliers.md").exists() and not (out / "figures" / "multiplier.png").exists()


def remove_rung(runs_dir, rung) -> None:
    members = list(runs_dir.glob(f"lad-{rung}-*"))
    assert members
    for member in members:
        shutil.rmtree(member)


@pytest.mark.slow  # two evaluations
def test_a_variant_with_too_few_rungs_loses_its_own_fit_not_the_others(tmp_path):
    runs_dir = tmp_path / "runs"
    make_ladder(runs_dir)
    for rung, compute in RUNGS.items():  # qk_norm: baseline with half the compute, every rung
        for seed, lr in ((100, 2e-3), (0, 2e-3), (1, 2e-3), (2, 2e-3)):
            write_run(runs_dir, "qk_norm", rung, lr, seed, E + A * (0.5 * compute) ** -ALPHA)
    for member in runs_dir.glob("lad-r4-*"):  # gated_attn never reached r4
        shutil.rmtree(member / "gated_attn", ignore_errors=True)
    out = evaluate(EvaluateConfig(experiment="lad", runs_dir=str(runs_dir), bootstrap_resamples=50))
    multipliers = pd.read_csv(out / "tables" / "multipliers.csv")
    assert set(multipliers["variant"]) == {"qk_norm"}
    assert multipliers["multiplier"].tolist() == pytest.approx([0.5] * 4, rel=0.02)
    text = (out / "tables" / "per_rung.md").read_text()
    assert "No scaling fit for gated_attn (gated_attn: a power-law fit needs at least 4" in text
    per_rung = pd.read_csv(out / "tables" / "per_rung.csv")
    assert len(per_rung[per_rung["variant"] == "gated_attn"]) == 3  # its per-rung comparisons stand
    # Without qk_norm, no variant is left to compare: the ladder says so instead of an empty table.
    for member in runs_dir.glob("lad-*"):
        shutil.rmtree(member / "qk_norm", ignore_errors=True)
    out = evaluate(EvaluateConfig(experiment="lad", runs_dir=str(runs_dir), bootstrap_resamples=50))
    assert "No scaling fit: no variant but baseline could be fitted." in (out / "tables" / "per_rung.md").read_text()
    assert not (out / "tables" / "multipliers.csv").exists()

"""Table numbers are the runs' own numbers; intervals, tests and data checks behave."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from attnlab.analysis.pipeline import load_experiment, write_tables
from attnlab.analysis.tables import aggregate_table, baseline_tests_table, per_run_table
from attnlab.runs import find_runs, latest_experiment

from .conftest import EXPERIMENT, SEEDS, VARIANTS


@pytest.fixture(scope="module")
def experiment(runs_dir):
    return load_experiment(runs_dir, EXPERIMENT)


def test_per_run_table_equals_summary_and_metrics(experiment, tmp_path):
    write_tables(experiment, tmp_path)
    table = pd.read_csv(tmp_path / "per_run.csv")
    assert list(zip(table["variant"], table["seed"])) == [(v, s) for v in VARIANTS for s in SEEDS]
    for row, run in zip(table.itertuples(), experiment.runs):
        summary = json.loads(run.summary.read_text())
        for key in ("tokens_seen", "final_train_loss", "final_val_loss", "best_val_loss", "final_val_ppl",
                    "wall_time_s", "tokens_per_s"):
            assert getattr(row, key) == pytest.approx(summary[key], rel=1e-12), key
        assert row.parameters == summary["parameters"]["total"]
        metrics = pd.read_csv(run.metrics)
        assert row.final_val_loss == pytest.approx(metrics["val/loss"].dropna().iloc[-1])
        assert row.best_val_loss == pytest.approx(metrics["val/loss"].dropna().min())
        assert row.final_train_loss == pytest.approx(metrics["train/loss"].dropna().iloc[-1])
    markdown = (tmp_path / "per_run.md").read_text()
    assert f"{table['final_val_loss'][0]:.4f}" in markdown
    assert "\\begin{tabular}" in (tmp_path / "per_run.tex").read_text()


def test_aggregate_is_mean_and_student_t_interval_over_seeds(experiment, tmp_path):
    write_tables(experiment, tmp_path)
    agg = pd.read_csv(tmp_path / "aggregate.csv").set_index("variant")
    for variant in VARIANTS:
        values = experiment.frame.loc[experiment.frame["variant"] == variant, "final_val_loss"].to_numpy()
        low, high = stats.t.interval(0.95, len(values) - 1, loc=values.mean(), scale=stats.sem(values))
        assert agg.loc[variant, "n"] == len(SEEDS)
        assert agg.loc[variant, "final_val_loss_mean"] == pytest.approx(values.mean())
        assert agg.loc[variant, "final_val_loss_ci"] == pytest.approx((high - low) / 2)
    text = (tmp_path / "aggregate.md").read_text()
    assert "±" in text and "95% confidence interval (Student t" in text
    assert r"$\pm$" in (tmp_path / "aggregate.tex").read_text()


def test_baseline_test_is_paired_by_seed_on_the_runs_values(experiment, tmp_path):
    write_tables(experiment, tmp_path)
    tests = pd.read_csv(tmp_path / "vs_baseline.csv")
    frame = experiment.frame
    row = tests[(tests["variant"] == "qk_scale") & (tests["metric"] == "final_val_loss")].iloc[0]
    variant = frame[frame["variant"] == "qk_scale"].set_index("seed")["final_val_loss"]
    baseline = frame[frame["variant"] == "baseline"].set_index("seed")["final_val_loss"]
    expected = stats.ttest_rel(variant.loc[list(SEEDS)], baseline.loc[list(SEEDS)])
    assert (row["test"], row["n_pairs"], row["paired_seeds"]) == ("paired", len(SEEDS), " ".join(map(str, SEEDS)))
    assert row["difference"] == pytest.approx((variant - baseline).mean())
    assert row["p_value"] == pytest.approx(expected.pvalue)
    assert row["p_holm"] == pytest.approx(expected.pvalue)  # one variant compared: Holm changes nothing
    assert bool(row["significant"]) == (expected.pvalue < 0.05)
    assert row["baseline_sd"] == pytest.approx(baseline.std(ddof=1))
    text = (tmp_path / "vs_baseline.md").read_text()
    assert f"paired t (n={len(SEEDS)} seeds)" in text and "p (Holm)" in text and "MDD (power 0.8)" in text
    assert "MDD = (t_{1-alpha/2, n-1} + t_{power, n-1}) × sd_diff / sqrt(n)" in text
    assert r"$\times$" in (tmp_path / "vs_baseline.tex").read_text()


# Hand-made seed values: b's differences from baseline (-0.10, -0.15, -0.05) give a paired t of
# -2 sqrt(3) on 2 degrees of freedom, p = 1 - sqrt(12/14) = 0.07418 (see test_stats); c shares no seed.
HAND = pd.DataFrame(
    [("baseline", s, v) for s, v in zip((0, 1, 2), (4.20, 4.15, 4.35))]
    + [("b", s, v) for s, v in zip((0, 1, 2), (4.10, 4.00, 4.30))]
    + [("c", s, v) for s, v in zip((5, 6), (4.00, 4.02))],
    columns=["variant", "seed", "final_val_loss"])


def test_comparison_table_pairs_welches_and_holm_corrects_hand_numbers():
    table = baseline_tests_table(HAND, metrics=["final_val_loss"], resamples=2_000, bootstrap_seed=1)
    rows = table.numbers.set_index("variant")
    p_b = 1 - np.sqrt(12 / 14)
    p_c = stats.ttest_ind([4.00, 4.02], [4.20, 4.15, 4.35], equal_var=False).pvalue
    assert (rows.loc["b", "test"], rows.loc["c", "test"]) == ("paired", "welch")
    assert rows.loc["b", "p_value"] == pytest.approx(p_b)
    assert rows.loc["c", "p_value"] == pytest.approx(p_c)
    # Holm over the two: p_c (0.0618) < p_b (0.0742), so c gets 2 p_c = 0.1236 and b max(2 p_c, p_b) = 0.1236.
    assert p_c < p_b
    assert rows.loc["c", "p_holm"] == pytest.approx(2 * p_c)
    assert rows.loc["b", "p_holm"] == pytest.approx(2 * p_c)
    assert not rows["significant"].any()
    assert rows.loc["b", "mdd"] == pytest.approx(0.154826, rel=1e-5)  # (t_.975,2 + t_.8,2) * 0.05 / sqrt 3
    assert bool(rows.loc["c", "sd_difference_assumed"]) and not bool(rows.loc["b", "sd_difference_assumed"])
    text = table.to_markdown()
    assert "| b | final val loss | paired t (n=3 seeds) | -0.1000 |" in text
    assert "| c | final val loss | Welch t (n=2 / 3) |" in text and "(assumed sd)" in text
    assert "Holm's step-down" in text and "assumed = baseline seed sd × sqrt(2)" in text
    assert baseline_tests_table(HAND, metrics=["final_val_loss"], resamples=2_000,
                                bootstrap_seed=1).numbers.equals(table.numbers)  # the bootstrap is seeded


def test_a_single_seed_says_so_instead_of_an_interval(experiment):
    one = experiment.frame[experiment.frame["seed"] == 0]
    aggregate = aggregate_table(one)
    assert np.isnan(aggregate.numbers["final_val_loss_ci"]).all()
    text = aggregate.to_markdown()
    assert "(n=1)" in text and "±" not in text.split("\n>")[0]
    assert "a single run has no interval" in text
    tests = baseline_tests_table(one).to_markdown()
    assert "n/a (needs n>=2 per side, has 1 / 1)" in tests and "Welch t (n=1 / 1)" in tests


def test_without_baseline_runs_the_table_is_empty_and_says_why(experiment):
    table = baseline_tests_table(experiment.frame, "basline")
    assert table.numbers.empty and table.display.empty
    assert table.notes[0] == ("No comparison: the reference variant 'basline' has no evaluable runs in this "
                              "experiment (variants present: baseline, qk_scale); pass baseline=<variant> to "
                              "compare against one of them.")
    assert "No comparison" in table.to_markdown() and "No comparison" in table.to_latex()
    alone = baseline_tests_table(experiment.frame[experiment.frame["variant"] == "qk_scale"], "qk_scale")
    assert alone.numbers.empty and "'qk_scale' is the only variant" in alone.notes[0]


def _copy_experiment(runs_dir, tmp_path, name):
    shutil.copytree(runs_dir / EXPERIMENT, tmp_path / name, ignore=shutil.ignore_patterns("*.ckpt", "tensorboard"))
    return tmp_path


def test_runs_on_another_tokenizer_are_refused_or_flagged_never_mixed_silently(runs_dir, tmp_path):
    root = _copy_experiment(runs_dir, tmp_path, "mixed")
    summary_path = root / "mixed" / "qk_scale" / "seed1" / "summary.json"
    summary = json.loads(summary_path.read_text())
    summary["data"]["tokenizer_sha256"] = "f" * 64
    summary_path.write_text(json.dumps(summary))
    with pytest.raises(ValueError, match=r"runs were trained on different data or tokenizers .*"
                                         r"tokenizer ffffffffffff: qk_scale/seed1.*allow_mixed_data=true"):
        load_experiment(root, "mixed")
    exp = load_experiment(root, "mixed", allow_mixed_data=True)
    assert any("WARNING: runs were trained on different data" in line
               for line in per_run_table(exp.frame, exp.notes).to_markdown().splitlines())


def test_runs_with_different_settings_carry_a_warning(runs_dir, tmp_path):
    root = _copy_experiment(runs_dir, tmp_path, "steps")
    summary_path = root / "steps" / "baseline" / "seed0" / "summary.json"
    summary_path.write_text(json.dumps({**json.loads(summary_path.read_text()), "max_steps": 8}))
    exp = load_experiment(root, "steps")
    assert "WARNING: runs differ in max_steps (baseline: 8/4, qk_scale: 4)." in exp.notes
    assert "runs differ in max_steps" in aggregate_table(exp.frame, notes=exp.notes).to_markdown()
    # A run on two processes (DDP: twice the global batch) and one validated on more batches, beside
    # the runs' own, and a run of another model size: each named.
    other = root / "steps" / "qk_scale" / "seed1" / "summary.json"
    recorded = json.loads(other.read_text())
    assert recorded["world_size"] == 1 and recorded["val_batches"] > 0  # what training writes
    other.write_text(json.dumps({**recorded, "world_size": 2, "val_batches": recorded["val_batches"] + 1,
                                 "parameters": {**recorded["parameters"], "total": 1234}}))
    notes = load_experiment(root, "steps").notes
    assert "WARNING: runs differ in world_size (baseline: 1, qk_scale: 1/2)." in notes
    assert any(note.startswith("WARNING: runs differ in val_batches (") for note in notes)
    assert any(note.startswith("WARNING: the runs of qk_scale differ in parameter count (1,234 / ") for note in notes)


def test_runs_on_the_seeds_that_chose_a_ladder_member_s_rate_carry_a_note(runs_dir, tmp_path):
    """A ladder member evaluated on its own: its selection-seed runs chose the rate (each is the
    best rate on its seed), which a note says; the ladder's evaluation leaves them out."""
    import yaml

    root = _copy_experiment(runs_dir, tmp_path, "member")
    assert not [n for n in load_experiment(root, "member").notes if "chose this learning rate" in n]
    for variant in ("baseline", "qk_scale"):
        config_path = root / "member" / variant / "seed1" / "config.yaml"
        config = yaml.safe_load(config_path.read_text())
        config_path.write_text(yaml.safe_dump({**config, "ladder": {"name": "lad", "selection_seeds": [1]}}))
    notes = load_experiment(root, "member").notes
    assert ("NOTE: baseline/seed1, qk_scale/seed1 chose this learning rate (selection seeds of ladder 'lad'); a "
            "comparison that counts them favours it; python evaluate.py experiment=lad leaves them out") in notes


def test_heatmaps_and_samples_default_to_the_newest_experiment_trained_on_text(runs_dir, tmp_path):
    """A synthetic task's runs have no tokenizer.model: without an experiment named, what draws text
    prompts (load_experiment with a checkpoint) takes the newest text experiment, not the newest."""
    text = tmp_path / EXPERIMENT / "baseline" / "seed0"
    shutil.copytree(runs_dir / EXPERIMENT / "baseline" / "seed0", text)
    synthetic = tmp_path / "mqar" / "baseline" / "seed0"
    synthetic.mkdir(parents=True)
    (synthetic / "summary.json").write_text(json.dumps({"final_val_loss": 1.0}))  # written after the text run's
    assert latest_experiment(tmp_path) == "mqar"
    assert latest_experiment(tmp_path, with_text=True) == EXPERIMENT
    assert load_experiment(tmp_path, checkpoint="best").name == EXPERIMENT
    (text / "tokenizer.model").unlink()
    with pytest.raises(FileNotFoundError, match="no finished runs trained on text under .*; train some first"):
        latest_experiment(tmp_path, with_text=True)


def test_no_runs_found_names_what_exists(runs_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="no finished runs of experiment 'nope' under .*; available: tiny"):
        load_experiment(runs_dir, "nope")
    with pytest.raises(FileNotFoundError, match="no finished runs under .*; train some first"):
        load_experiment(tmp_path)
    assert len(find_runs(runs_dir, EXPERIMENT)) == len(VARIANTS) * len(SEEDS)

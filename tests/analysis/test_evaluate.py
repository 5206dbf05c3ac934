"""evaluate(): every output of one experiment, reproducible samples, and clear errors for bad input.

It works with whatever runs exist: without runs of the reference variant the comparison is
skipped with a note, and unfinished or unreadable runs are named and skipped.
"""

import json
import logging
import os
import shutil
import subprocess
import sys

import pandas as pd
import pytest

from attnlab.analysis.config import EvaluateConfig
from attnlab.analysis.pipeline import evaluate, load_experiment, load_run, representative_runs
from attnlab.analysis.samples import sample_model
from attnlab.generate import SamplingConfig

from .conftest import EXPERIMENT, PROMPTS, REPO, VARIANTS, compose_config, tiny_overrides, write_demo_sample

SAMPLING = SamplingConfig(max_new_tokens=8, seed=11)


def expected_outputs(variants, compared: bool = True) -> list[str]:
    """Every file evaluate writes with all outputs on and heatmap_layers=[1] (``compared``: the
    reference variant and another one have runs, so there are difference heatmaps)."""
    expected = [f"tables/{name}.{ext}" for name in ("per_run", "aggregate", "vs_baseline")
                for ext in ("md", "csv", "tex")]
    expected += [f"figures/{name}.{ext}" for name in ("val_loss_vs_tokens", "final_val_loss", "throughput",
                                                      "induction_vs_tokens", "head_scores", "loss_by_position")
                 for ext in ("png", "pdf")]
    expected += [f"heatmaps/{v}/layer1_head0.{ext}" for v in variants for ext in ("png", "pdf")]
    expected += [f"heatmaps/grid_layer1.{ext}" for ext in ("png", "pdf")]
    expected += [f"heatmaps/diff_layer1.{ext}" for ext in ("png", "pdf") if compared]
    return expected + ["samples.md", "samples.json", "attention_stats.csv", "attention_stats.md",
                       "tables/attention_stats_per_run.csv", "head_scores.csv", "head_scores.md",
                       "loss_by_position.csv", "evaluation.json"]


@pytest.fixture(scope="module")
def evaluated(runs_dir):
    return evaluate(EvaluateConfig(runs_dir=str(runs_dir), prompts=list(PROMPTS), sampling=SAMPLING,
                                   heatmap_layers=[1]))


def test_evaluate_writes_every_output_of_the_latest_experiment(evaluated, runs_dir):
    assert evaluated == runs_dir.parent / EXPERIMENT  # results/runs -> results/<experiment>
    missing = [p for p in expected_outputs(VARIANTS) if not (evaluated / p).is_file()]
    assert not missing
    record = json.loads((evaluated / "evaluation.json").read_text())
    assert (record["skipped_runs"], record["not_produced"]) == ([], [])
    assert not list((evaluated / "heatmaps").rglob("*layer0*"))  # heatmap_layers=[1] (default: every layer)
    stats = pd.read_csv(evaluated / "attention_stats.csv")
    assert sorted(stats["variant"].unique()) == sorted(VARIANTS) and (stats["seeds"] == 2).all()


def test_the_record_lists_every_file_the_evaluation_wrote(evaluated):
    record = json.loads((evaluated / "evaluation.json").read_text())
    assert record["outputs"] == sorted(set(expected_outputs(VARIANTS)) - {"evaluation.json"})


def test_evaluating_some_outputs_again_replaces_theirs_and_keeps_the_others(evaluated, runs_dir, tmp_path):
    import shutil

    out = shutil.copytree(evaluated, tmp_path / "copy")
    (out / "my_notes.md").write_text("mine")
    evaluate(EvaluateConfig(runs_dir=str(runs_dir), prompts=list(PROMPTS), sampling=SAMPLING, output_dir=str(out),
                            outputs=["heatmaps"], heatmap_layers=[0]))
    assert not list(out.glob("heatmaps/**/*layer1*"))  # the previous layers' heatmaps are not this one's
    assert {p.name for p in (out / "heatmaps" / VARIANTS[0]).iterdir()} == {"layer0_head0.png", "layer0_head0.pdf"}
    kept = [p for p in expected_outputs(VARIANTS) if "heatmaps" not in p]
    assert all((out / p).read_bytes() == (evaluated / p).read_bytes() for p in kept if p != "evaluation.json")
    listed = json.loads((out / "evaluation.json").read_text())["outputs"]
    assert set(kept) - {"evaluation.json"} <= set(listed) and "heatmaps/grid_layer0.png" in listed
    assert (out / "my_notes.md").read_text() == "mine" and "my_notes.md" not in listed


def test_head_scores_have_a_row_per_run_layer_and_head_with_every_score(evaluated):
    from attnlab.analysis.head_scores import SCORES

    scores = pd.read_csv(evaluated / "head_scores.csv")
    assert set(SCORES) <= set(scores.columns)
    keys = set(zip(scores["variant"], scores["seed"], scores["layer"], scores["head"]))
    assert keys == {(v, s, layer, 0) for v in VARIANTS for s in (0, 1) for layer in (0, 1)}  # 2 layers, 1 head
    assert (scores["segment_len"] == 31).all()  # 32 shortened: <s> + 2 x 31 tokens fit block_size=64
    assert scores[list(SCORES)].notna().all().all() and scores["row_mass"].round(4).eq(1.0).all()
    text = (evaluated / "head_scores.md").read_text()
    assert "## Per variant" in text and "induction_max" in text and "attnlab/analysis/head_scores.py" in text


def test_loss_by_position_has_one_curve_per_run_over_the_validation_windows(evaluated):
    losses = pd.read_csv(evaluated / "loss_by_position.csv")
    assert set(zip(losses["variant"], losses["seed"])) == {(v, s) for v in VARIANTS for s in (0, 1)}
    for _, run in losses.groupby(["variant", "seed"]):
        assert run["position"].tolist() == list(range(16))  # the runs' trainer.seq_len
        assert run["loss"].gt(0).all() and run["windows"].nunique() == 1
    # the same windows for every run: two runs of one variant differ only by their model
    assert losses["windows"].nunique() == 1


def test_difference_heatmaps_are_drawn_against_the_reference(evaluated):
    assert sorted(p.name for p in (evaluated / "heatmaps").glob("diff_layer*")) == \
        ["diff_layer1.pdf", "diff_layer1.png"]


def test_samples_use_one_seed_for_every_variant_and_both_modes(evaluated):
    record = json.loads((evaluated / "samples.json").read_text())
    assert record["sampling"]["seed"] == 11 and record["sampling"]["repetition_penalty"] == 1.1
    keys = {(s["variant"], s["prompt"], s["mode"]) for s in record["samples"]}
    assert keys == {(v, p, m) for v in VARIANTS for p in PROMPTS for m in ("greedy", "sampled")}
    text = (evaluated / "samples.md").read_text()
    assert f"## {PROMPTS[0]}" in text and "### sampled" in text


def test_samples_are_reproducible_for_a_fixed_seed(evaluated, runs_dir):
    run = representative_runs(load_experiment(runs_dir, EXPERIMENT))[0]
    model, tokenizer = load_run(run)
    again = sample_model(model, tokenizer, PROMPTS, SAMPLING, run.variant, run.seed, "best")
    written = [s for s in json.loads((evaluated / "samples.json").read_text())["samples"]
               if s["variant"] == run.variant]
    assert [s.completion for s in again] == [s["completion"] for s in written]


def test_a_checkpoint_of_another_variant_is_refused(runs_dir, tmp_path):
    shutil.copytree(runs_dir / EXPERIMENT, tmp_path / "swapped", ignore=shutil.ignore_patterns("tensorboard"))
    shutil.copyfile(runs_dir / EXPERIMENT / "baseline/seed0/checkpoints/best.ckpt",
                    tmp_path / "swapped/qk_scale/seed0/checkpoints/best.ckpt")
    run = next(r for r in load_experiment(tmp_path, "swapped").runs if (r.variant, r.seed) == ("qk_scale", 0))
    with pytest.raises(ValueError, match=r"does not match its run directory \(variant: checkpoint 'baseline' "
                                         r"vs run 'qk_scale'"):
        run.load_model()


@pytest.mark.parametrize("settings, message", [
    ({"prompts": ["海" * 80]},
     r"prompts\[0\]='海+' does not fit run baseline/seed0: prompt is \d+ tokens, longer than the model's "
     r"context allows \(block_size=64\); shorten it to at most 63 tokens\. Give shorter prompts, e\.g\. "
     r"\"prompts=\['\.\.\.','\.\.\.'\]\" \(quoted for the shell\), or a smaller sampling\.max_new_tokens"),
    ({"prompts": ["海", "海" * 20], "sampling": SamplingConfig(max_new_tokens=50)},
     r"prompts\[1\]='海+' does not fit run baseline/seed0: prompt \(\d+ tokens\) \+ sampling\.max_new_tokens=50 "
     r"exceeds the model's context block_size=64; allowed: sampling\.max_new_tokens <= \d+\."),
    ({"prompts": ["海"], "heatmap_prompt": "海" * 80},
     r"heatmap_prompt='海+' does not fit run baseline/seed0: prompt is \d+ tokens, longer than the model's context "
     r"allows \(block_size=64\); shorten it to at most 64 tokens\. Give a shorter one, e\.g\. "
     r"\"heatmap_prompt='\.\.\.'\" \(quoted for the shell\)$"),
    ({"prompts": ["海"], "outputs": ["tables", "heatmaps"], "heatmap_layers": [0, 5]},
     r"heatmap_layers=\[0, 5\]: layers \[5\] do not exist in every model drawn \(n_layer=2\); allowed: 0\.\.1, "
     r"or null for every layer"),
])
def test_a_prompt_or_heatmap_layer_that_cannot_be_drawn_fails_before_any_output_naming_the_setting(
        runs_dir, tmp_path, settings, message):
    cfg = EvaluateConfig(runs_dir=str(runs_dir), output_dir=str(tmp_path / "out"),
                         **{"outputs": ["samples"], "sampling": SAMPLING, **settings})
    with pytest.raises(ValueError, match=message):
        evaluate(cfg)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("settings, message", [
    ({"outputs": ["tabels"]}, r"unknown outputs \['tabels'\]; allowed: tables, figures, samples"),
    ({"checkpoint": "final"}, "unknown checkpoint 'final'; allowed: best, last"),
    ({"confidence": 95.0}, r"confidence must be in \(0, 1\), got 95.0"),
    ({"model_seed": 7}, "model_seed=7 has no evaluable run of any variant; seeds per variant: baseline: 0, 1; "
                        "qk_scale: 0, 1"),
    ({"power": 1.5}, r"power must be in \(0, 1\), got 1.5"),
    ({"bootstrap_resamples": 0}, "bootstrap_resamples must be >= 1, got 0"),
    ({"baseline": "qk_scal"}, r"baseline='qk_scal' is neither a variant of these runs \(baseline, qk_scale\) nor a "
                              r"registered one \(.*qk_scale"),
])
def test_bad_settings_name_the_value_and_the_allowed_ones(runs_dir, tmp_path, settings, message):
    cfg = EvaluateConfig(runs_dir=str(runs_dir), output_dir=str(tmp_path), **{"outputs": ["samples"], **settings})
    with pytest.raises(ValueError, match=message):
        evaluate(cfg)


def test_the_runs_of_a_variant_removed_since_may_still_be_the_reference():
    from attnlab.analysis.tables import check_reference_variant

    check_reference_variant("retired_variant", ["retired_variant", "baseline"])  # its runs are there
    check_reference_variant("qk_norm", ["baseline"])  # registered, no runs: a note, no comparison
    with pytest.raises(ValueError, match=r"baseline='retired_variant' is neither a variant of these runs \(baseline\)"):
        check_reference_variant("retired_variant", ["baseline"])


def test_a_ladder_result_named_on_purpose_must_exist(runs_dir, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(FileNotFoundError, match="ladder_result='reference/ladderr': no such directory"):
        evaluate(EvaluateConfig(runs_dir=str(runs_dir), output_dir=str(out), ladder_result="reference/ladderr"))
    assert not out.exists()


def test_cli_options_compose_into_the_typed_config(runs_dir):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from attnlab.analysis.config import register_schema

    register_schema()
    with initialize_config_dir(config_dir=str(REPO / "configs" / "evaluate"), version_base=None):
        cfg = compose(config_name="evaluate", overrides=[
            f"experiment={EXPERIMENT}", f"runs_dir={runs_dir}", "outputs=[tables]", "sampling.top_k=5",
            'prompts=["町は、"]'])
    config = OmegaConf.to_object(cfg)
    assert isinstance(config, EvaluateConfig) and isinstance(config.sampling, SamplingConfig)
    assert (config.experiment, config.outputs, config.sampling.top_k, config.prompts) == \
        (EXPERIMENT, ["tables"], 5, ["町は、"])
    assert EvaluateConfig().prompts[0] == "彼女が子供の頃に住んでいた、海の見える小さな町は、"


@pytest.mark.slow  # a subprocess: a fresh interpreter imports torch
def test_cli_reports_no_runs_in_one_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, str(REPO / "evaluate.py"), f"runs_dir={tmp_path / 'empty'}"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == \
        f"error: no finished runs under {tmp_path / 'empty'}; train some first, e.g. `python train.py experiment=demo`"


@pytest.fixture(scope="module")
def sep_qkv_only(tmp_path_factory):
    """What `python train.py variant=sep_qkv` leaves: an experiment without any baseline run."""
    from attnlab.training.run import train

    root = tmp_path_factory.mktemp("sep_qkv_only")
    corpus = write_demo_sample(root / "docs.jsonl")
    for seed in (0, 1):
        train(compose_config(["variant=sep_qkv", f"seed={seed}", "experiment_name=solo",
                              *tiny_overrides(root, corpus), "model.block_size=64"]))
    return root / "runs"


def test_an_experiment_without_baseline_runs_is_evaluated_and_says_the_comparison_is_skipped(
        sep_qkv_only, tmp_path, caplog):
    cfg = EvaluateConfig(runs_dir=str(sep_qkv_only), output_dir=str(tmp_path / "out"), prompts=list(PROMPTS),
                         sampling=SAMPLING, heatmap_layers=[1])
    with caplog.at_level(logging.WARNING, logger="attnlab.analysis.pipeline"):
        out = evaluate(cfg)
    assert not [p for p in expected_outputs(["sep_qkv"], compared=False) if not (out / p).is_file()]
    assert not list((out / "heatmaps").glob("diff_layer*"))  # no reference: no difference maps
    per_run = pd.read_csv(out / "tables" / "per_run.csv")
    assert list(zip(per_run["variant"], per_run["seed"])) == [("sep_qkv", 0), ("sep_qkv", 1)]
    reason = ("No comparison: the reference variant 'baseline' has no evaluable runs in this experiment "
              "(variants present: sep_qkv); pass baseline=<variant> to compare against one of them.")
    assert pd.read_csv(out / "tables" / "vs_baseline.csv").empty
    assert f"> {reason}" in (out / "tables" / "vs_baseline.md").read_text()
    assert json.loads((out / "evaluation.json").read_text())["not_produced"] == [
        f"vs_baseline: {reason}", f"difference heatmaps: {reason}"]
    assert f"vs_baseline: {reason}" in [r.getMessage() for r in caplog.records]
    assert f"difference heatmaps: {reason}" in [r.getMessage() for r in caplog.records]
    assert set(pd.read_csv(out / "head_scores.csv")["variant"]) == {"sep_qkv"}
    # baseline=<variant> chooses the reference; with one variant there is nothing to compare it with.
    alone = evaluate(EvaluateConfig(runs_dir=str(sep_qkv_only), output_dir=str(tmp_path / "alone"),
                                    outputs=["tables"], baseline="sep_qkv"))
    assert "No comparison: 'sep_qkv' is the only variant" in (alone / "tables" / "vs_baseline.md").read_text()


def test_unfinished_and_unreadable_runs_are_named_and_skipped_and_the_rest_evaluated(runs_dir, tmp_path, caplog):
    exp = tmp_path / "runs" / "damaged"
    shutil.copytree(runs_dir / EXPERIMENT, exp, ignore=shutil.ignore_patterns("tensorboard"))
    (exp / "qk_scale/seed1/summary.json").write_text('{"steps": 4, "tokens_')  # cut off mid-write
    (exp / "baseline/seed1/checkpoints/best.ckpt").unlink()
    shutil.copytree(exp / "qk_scale/seed0", exp / "qk_scale/seed2")
    (exp / "qk_scale/seed2/metrics.csv").write_text("")
    (exp / "baseline/seed3").mkdir()  # a run still training
    shutil.copy(exp / "baseline/seed0/config.yaml", exp / "baseline/seed3")
    cfg = EvaluateConfig(runs_dir=str(tmp_path / "runs"), experiment="damaged", output_dir=str(tmp_path / "out"),
                         outputs=["tables", "samples", "attention_stats"], prompts=[PROMPTS[1]], sampling=SAMPLING)
    with caplog.at_level(logging.WARNING, logger="attnlab.analysis.pipeline"):
        out = evaluate(cfg)

    skipped = {s["run"]: s["reasons"] for s in json.loads((out / "evaluation.json").read_text())["skipped_runs"]}
    json_error = skipped["qk_scale/seed1"][0]  # json's own message follows, e.g. "Unterminated string ..."
    assert json_error.startswith("summary.json unreadable: summary.json is not valid JSON (")
    assert skipped == {
        "baseline/seed1": ["no checkpoints/best.ckpt"],
        "baseline/seed3": ["unfinished: no summary.json (resume it with resume=auto)"],
        "qk_scale/seed1": [json_error],
        "qk_scale/seed2": ["metrics.csv unreadable: metrics.csv is not a readable CSV file "
                           "(No columns to parse from file)"],
    }
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert all(f"skipping run {name} " in warned for name in skipped)
    per_run = pd.read_csv(out / "tables" / "per_run.csv")
    assert list(zip(per_run["variant"], per_run["seed"])) == [("baseline", 0), ("qk_scale", 0)]
    for text in [(out / "tables" / f"{name}.md").read_text() for name in ("per_run", "aggregate", "vs_baseline")] \
            + [(out / "attention_stats.md").read_text()]:
        note = next(line for line in text.splitlines() if line.startswith("> Skipped runs"))
        assert all(name in note for name in skipped)
    samples = json.loads((out / "samples.json").read_text())["samples"]
    assert {(s["variant"], s["seed"]) for s in samples} == {("baseline", 0), ("qk_scale", 0)}
    assert set(pd.read_csv(out / "attention_stats.csv")["variant"]) == {"baseline", "qk_scale"}

    # Tables alone read no checkpoint: the run without one is evaluated there.
    tables = evaluate(EvaluateConfig(runs_dir=str(tmp_path / "runs"), experiment="damaged",
                                     output_dir=str(tmp_path / "tables"), outputs=["tables"]))
    assert len(pd.read_csv(tables / "tables" / "per_run.csv")) == 3


def test_an_experiment_with_no_readable_run_is_an_error_naming_each(runs_dir, tmp_path):
    shutil.copytree(runs_dir / EXPERIMENT / "qk_scale", tmp_path / "broken" / "qk_scale",
                    ignore=shutil.ignore_patterns("*.ckpt", "tensorboard"))
    for seed in (0, 1):
        (tmp_path / "broken" / "qk_scale" / f"seed{seed}" / "summary.json").write_text("[]")
    with pytest.raises(ValueError, match=r"no run of experiment 'broken' under .* can be evaluated: "
                                         r"qk_scale/seed0 \(summary.json unreadable: summary.json holds a list, "
                                         r"not a JSON object\); qk_scale/seed1 \("):
        load_experiment(tmp_path, "broken")


def test_a_checkpoint_that_fails_to_load_leaves_out_only_that_run(runs_dir, tmp_path, monkeypatch):
    from attnlab.analysis import pipeline

    def load_run(run, checkpoint="best", device="cpu"):  # passes the header checks, then fails
        if (run.variant, run.seed) == ("qk_scale", 1):
            raise RuntimeError("Error(s) in loading state_dict for GPT")
        return real_load_run(run, checkpoint, device)

    real_load_run = pipeline.load_run
    monkeypatch.setattr(pipeline, "load_run", load_run)
    out = evaluate(EvaluateConfig(runs_dir=str(runs_dir), output_dir=str(tmp_path), model_seed=1,
                                  outputs=["samples", "attention_stats"], prompts=[PROMPTS[1]], sampling=SAMPLING))
    assert json.loads((out / "evaluation.json").read_text())["not_produced"] == [
        "qk_scale/seed1: checkpoints/best.ckpt does not load (Error(s) in loading state_dict for GPT); "
        "left out of every output that needs its model"]
    samples = json.loads((out / "samples.json").read_text())["samples"]
    assert {(s["variant"], s["seed"]) for s in samples} == {("baseline", 1)}
    per_run = pd.read_csv(out / "tables" / "attention_stats_per_run.csv")
    assert set(zip(per_run["variant"], per_run["seed"])) == {("baseline", 0), ("baseline", 1), ("qk_scale", 0)}

"""evaluate(): every output of one experiment, reproducible samples, and clear errors for bad input."""

import json
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

from .conftest import EXPERIMENT, PROMPTS, REPO, VARIANTS

SAMPLING = SamplingConfig(max_new_tokens=8, seed=11)


@pytest.fixture(scope="module")
def evaluated(runs_dir):
    return evaluate(EvaluateConfig(runs_dir=str(runs_dir), prompts=list(PROMPTS), sampling=SAMPLING,
                                   heatmap_layers=[1]))


def test_evaluate_writes_every_output_of_the_latest_experiment(evaluated, runs_dir):
    assert evaluated == runs_dir.parent / EXPERIMENT  # results/runs -> results/<experiment>
    expected = [f"tables/{name}.{ext}" for name in ("per_run", "aggregate", "vs_baseline")
                for ext in ("md", "csv", "tex")]
    expected += [f"figures/{name}.{ext}" for name in ("val_loss_vs_tokens", "final_val_loss", "throughput")
                 for ext in ("png", "pdf")]
    expected += [f"heatmaps/{v}/layer1_head0.{ext}" for v in VARIANTS for ext in ("png", "pdf")]
    expected += [f"heatmaps/grid_layer1.{ext}" for ext in ("png", "pdf")]
    expected += ["samples.md", "samples.json", "attention_stats.csv", "attention_stats.md",
                 "tables/attention_stats_per_run.csv", "evaluation.json"]
    missing = [p for p in expected if not (evaluated / p).is_file()]
    assert not missing
    assert not list((evaluated / "heatmaps").rglob("*layer0*"))  # heatmap_layers=[1] (default: every layer)
    stats = pd.read_csv(evaluated / "attention_stats.csv")
    assert sorted(stats["variant"].unique()) == sorted(VARIANTS) and (stats["seeds"] == 2).all()


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


def test_a_prompt_longer_than_the_context_fails_before_any_output(runs_dir, tmp_path):
    cfg = EvaluateConfig(runs_dir=str(runs_dir), output_dir=str(tmp_path / "out"), prompts=["海" * 80],
                         outputs=["samples"], sampling=SAMPLING)
    with pytest.raises(ValueError, match=r"baseline/seed0, prompt '海+': prompt is \d+ tokens, longer than the "
                                         r"model's context allows \(block_size=64\)"):
        evaluate(cfg)
    assert not (tmp_path / "out" / "samples.md").exists()


@pytest.mark.parametrize("settings, message", [
    ({"outputs": ["tabels"]}, r"unknown outputs \['tabels'\]; allowed: tables, figures, samples"),
    ({"checkpoint": "final"}, "unknown checkpoint 'final'; allowed: best, last"),
    ({"confidence": 95.0}, r"confidence must be in \(0, 1\), got 95.0"),
    ({"model_seed": 7}, "model_seed=7 has no finished run of variant 'baseline'; its seeds: 0, 1"),
])
def test_bad_settings_name_the_value_and_the_allowed_ones(runs_dir, tmp_path, settings, message):
    cfg = EvaluateConfig(runs_dir=str(runs_dir), output_dir=str(tmp_path), **{"outputs": ["samples"], **settings})
    with pytest.raises(ValueError, match=message):
        evaluate(cfg)


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


def test_cli_reports_no_runs_in_one_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, str(REPO / "evaluate.py"), f"runs_dir={tmp_path / 'empty'}"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == \
        f"error: no finished runs under {tmp_path / 'empty'}; train some first, e.g. `python train.py experiment=demo`"

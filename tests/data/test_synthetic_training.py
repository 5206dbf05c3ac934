"""The synthetic tasks through train() and evaluate(): accuracy logged on the scored positions,
run directories without a tokenizer, exact resumption, the recall experiment and its estimate."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from hydra import initialize_config_dir
from omegaconf import OmegaConf

from attnlab.training.run import TrainingInterrupted, train
from test_resume import PreemptAt
from test_training import CONFIGS, REPO, compose_config
from variants import available_variants

OPTIONS = {"mqar": ["data.mqar.vocab_size=32", "data.mqar.num_pairs=4"], "induction": ["data.induction.vocab_size=32"]}


def synthetic_overrides(tmp_path: Path, source: str, name: str) -> list[str]:
    """The recall preset at 16 tokens: 4 steps in a few seconds on one core."""
    return [f"experiment_name={name}", f"results_dir={tmp_path / 'runs'}", "trainer=cpu", "trainer.progress_bar=false",
            "trainer.max_steps=4", "trainer.batch_size=2", "trainer.seq_len=16", "trainer.val_every_n_steps=2",
            "trainer.val_batches=2", "trainer.log_every_n_steps=1", "model=recall", "model.block_size=16",
            "optim.warmup_steps=1", f"data={source}", *OPTIONS[source]]


@pytest.mark.parametrize("source", ["mqar", "induction"])
def test_a_4_step_run_logs_accuracy_and_needs_no_tokenizer(source, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = train(compose_config(synthetic_overrides(tmp_path, source, "unit")))
    metrics = pd.read_csv(run.metrics)
    assert metrics["train/acc"].notna().sum() == 4 and metrics["val/acc"].notna().sum() == 2
    assert metrics["val/acc"].dropna().between(0, 1).all()
    tags = EventAccumulator(str(run.tensorboard)).Reload().Tags()["scalars"]
    assert {"train/acc", "val/acc", "val/loss"} <= set(tags)
    summary = run.load_summary()
    assert summary["steps"] == 4 and 0 <= summary["final_val_acc"] <= 1
    assert summary["data"]["task"]["task"] == source and summary["data"]["tokenizer_sha256"] is None
    assert summary["data"]["source"].startswith(f"{source}(vocab_size=32")
    assert summary["data"]["tokenizer_vocab_size"] == 32
    assert run.config.is_file() and run.best_checkpoint.is_file() and not run.tokenizer.exists()
    assert run.load_model().config.vocab_size == 32


def test_text_runs_log_no_accuracy(tmp_path, corpus):
    from test_training import tiny_overrides

    run = train(compose_config(["experiment_name=text", *tiny_overrides(tmp_path, corpus), "trainer.max_steps=2"]))
    assert "val/acc" not in pd.read_csv(run.metrics) and "final_val_acc" not in run.load_summary()


@pytest.mark.slow  # three training runs, one interrupted and resumed
def test_a_resumed_synthetic_run_continues_the_same_stream(tmp_path):
    def overrides(name):
        return [*synthetic_overrides(tmp_path, "mqar", name), "trainer.max_steps=8", "trainer.val_every_n_steps=4",
                "trainer.checkpoint_every_n_steps=2"]

    straight = train(compose_config(overrides("straight")))
    with pytest.raises(TrainingInterrupted, match="at step 6"):
        train(compose_config(overrides("interrupted")), extra_callbacks=[PreemptAt(5)])
    resumed = train(compose_config([*overrides("interrupted"), "resume=auto"]))

    def logged(run):
        frame = pd.read_csv(run.metrics).dropna(subset=["train/loss"]).set_index("step")
        return frame[["train/loss", "train/acc"]]

    pd.testing.assert_frame_equal(logged(straight), logged(resumed))
    assert straight.load_summary()["final_val_acc"] == resumed.load_summary()["final_val_acc"]


@pytest.mark.slow  # evaluation end to end (tables and figures of trained runs)
def test_evaluation_of_a_synthetic_experiment_tabulates_accuracy_and_skips_text_outputs(tmp_path):
    from attnlab.analysis.config import EvaluateConfig
    from attnlab.analysis.pipeline import evaluate

    for variant in ("baseline", "qk_norm"):
        train(compose_config([*synthetic_overrides(tmp_path, "mqar", "syn"), f"variant={variant}"]))
    out = evaluate(EvaluateConfig(experiment="syn", runs_dir=str(tmp_path / "runs"),
                                  output_dir=str(tmp_path / "eval")))
    per_run = pd.read_csv(out / "tables" / "per_run.csv")
    assert per_run["final_val_acc"].between(0, 1).all() and len(per_run) == 2
    assert "final val acc" in (out / "tables" / "aggregate.md").read_text()
    record = json.loads((out / "evaluation.json").read_text())
    assert any("no tokenizer.model" in note and "samples" in note for note in record["not_produced"])
    assert not (out / "samples.md").exists() and not (out / "heatmaps").exists()


def test_the_recall_experiment_composes_for_every_variant():
    config = compose_config(["experiment=recall"])
    assert (config.experiment_name, config.model.preset, config.data.source) == ("recall", "recall", "mqar")
    assert (config.data.mqar.num_pairs, config.data.mqar.vocab_size, config.trainer.seq_len) == (8, 64, 32)
    for variant in available_variants():  # every registered variant fits the preset (n_head=2, even)
        compose_config(["experiment=recall", f"variant={variant}"]).validate()


def test_the_estimate_counts_the_sweep_as_hydra_would(caplog):
    from attnlab.training.config import register_schema
    from attnlab.training.estimate import TimeEstimate, count_jobs, sweep_values, warn_if_oversubscribed

    sweeper = {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
               "params": {"variant": "glob(*)", "seed": "0,1,2"}}

    def jobs(task: list[str], target: dict = sweeper) -> int | None:
        register_schema()  # as train.py does at import: the variant group is the registry's now
        config = OmegaConf.create({"hydra": {"sweeper": target, "overrides": {"task": task}}})
        with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):  # the group options, for glob
            return count_jobs(config)

    every = len(available_variants())
    assert jobs(["experiment=recall"]) == every * 3
    assert jobs(["experiment=recall", "seed=0,1"]) == every * 2  # the command line replaces the config's
    assert jobs(["variant=baseline,qk_norm", "seed=0,1,2", "trainer.max_steps=5"]) == 6
    assert jobs([], {"_target_": "hydra_plugins.optuna.OptunaSweeper"}) is None
    register_schema()
    config = OmegaConf.create({"hydra": {"sweeper": sweeper, "overrides": {"task": [
        "model=ladder/c1,ladder/c2", "seed=3", "trainer.max_steps=5"]}}})
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        values = sweep_values(config)
    assert values["model"] == ["ladder/c1", "ladder/c2"] and values["seed"] == ["3"]
    assert values["trainer.max_steps"] == ["5"] and len(values["variant"]) == every
    estimate = TimeEstimate("recall", 40)
    assert estimate.message(42) == "recall: 42 runs x ~40 s ≈ 28.0 min"
    assert estimate.message(1) == "recall: 1 run x ~40 s ≈ 0.7 min"
    assert not warn_if_oversubscribed(2, cores=2) and warn_if_oversubscribed(4, cores=2)
    assert "hydra.launcher.n_jobs=4 runs more runs at once than the 2 core(s) here" in caplog.text
    assert "hydra.launcher.n_jobs=2 runs one per core" in caplog.text
    scaled = TimeEstimate("recall", 40, steps=2000, start_seconds=8)
    assert scaled.run_seconds(OmegaConf.create({"trainer": {"max_steps": 500}})) == 8 + 32 / 4
    assert scaled.run_seconds(OmegaConf.create({"trainer": {"max_steps": 2000}})) == 40
    assert TimeEstimate("ladder", 57).run_seconds(OmegaConf.create({"trainer": {"max_steps": 5}})) == 57


@pytest.mark.slow  # starts train.py in a fresh interpreter
def test_the_recall_sweep_prints_its_estimate_first(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "-m", "experiment=recall", "variant=baseline,diff_attn", "seed=0",
         f"results_dir={tmp_path / 'runs'}", "trainer.max_steps=2", "trainer.val_every_n_steps=2",
         "trainer.val_batches=1", "trainer.progress_bar=false"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    # 2 steps of the 2,000 the estimate was measured at: its start (8 s) and a thousandth of the rest.
    assert "recall: 2 runs x ~8 s ≈ 0.3 min" in output
    assert output.index("recall: 2 runs") < output.index("Launching 2 jobs")
    for variant in ("baseline", "diff_attn"):
        assert "final_val_acc" in json.loads((tmp_path / "runs" / "recall" / variant / "seed0" / "summary.json")
                                             .read_text())

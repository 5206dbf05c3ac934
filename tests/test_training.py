"""train.py end to end on tiny settings: run directories, overrides, sweeps and config errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from attnlab.runs import RunDir, find_runs
from attnlab.training.config import TrainConfig, register_schema
from attnlab.training.run import train
from variants import available_variants

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


def tiny_overrides(tmp_path: Path, corpus: Path) -> list[str]:
    """A model and run small enough to train 4 steps in a few seconds on one CPU core."""
    return [
        f"results_dir={tmp_path / 'runs'}",
        "trainer=cpu", "trainer.progress_bar=false",
        "trainer.max_steps=4", "trainer.batch_size=2", "trainer.seq_len=16",
        "trainer.val_every_n_steps=2", "trainer.val_batches=2", "trainer.log_every_n_steps=1",
        "model.n_layer=2", "model.n_embd=32", "model.intermediate_size=64", "model.block_size=32",
        "optim.warmup_steps=1",
        "data=text", f"data.paths=[{corpus}]", f"data.cache_dir={corpus.parent / 'cache'}",
        "data.tokenizer.vocab_size=1000", "data.tokenizer.character_coverage=0.98",
        "data.val_fraction=0.2",
    ]


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    """Real ja/en prose from the bundled demo corpus, a few hundred documents."""
    import lzma

    path = tmp_path_factory.mktemp("corpus") / "docs.jsonl"
    with lzma.open(REPO / "data/demo/corpus.jsonl.xz", "rt", encoding="utf-8") as src:
        lines = [line for _, line in zip(range(4000), src)]
    ja = [ln for ln in lines if '"lang": "ja"' in ln][:60]
    en = [ln for ln in lines if '"lang": "en"' in ln][:30]
    path.write_text("".join(ja + en), encoding="utf-8")
    return path


def compose_config(overrides: list[str]) -> TrainConfig:
    register_schema()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        cfg = compose(config_name="train", overrides=overrides)
    return OmegaConf.to_object(cfg)


@pytest.mark.parametrize("variant", available_variants())
def test_every_variant_trains_and_leaves_a_complete_run_directory(variant, tmp_path, corpus):
    config = compose_config([f"variant={variant}", "experiment_name=unit", *tiny_overrides(tmp_path, corpus)])
    run = train(config)
    assert run.path == tmp_path / "runs" / "unit" / variant / "seed0"
    summary = run.load_summary()
    assert summary["variant"] == variant and summary["steps"] == 4
    assert summary["tokens_seen"] == 4 * 2 * 16
    assert summary["final_val_loss"] is not None and summary["best_val_loss"] <= summary["final_val_loss"]
    assert summary["parameters"]["total"] > 0 and summary["git_commit"] is not None
    for path in (run.config, run.metrics, run.tokenizer, run.last_checkpoint, run.best_checkpoint):
        assert path.is_file(), path
    assert list(run.tensorboard.rglob("events.out.tfevents.*"))
    metrics = pd.read_csv(run.metrics)
    assert {"train/loss", "val/loss", "val/ppl"} <= set(metrics.columns)
    assert metrics["train/loss"].notna().sum() == 4


def test_same_seed_gives_identical_losses_and_data_order(tmp_path, corpus):
    def losses(name):
        config = compose_config([f"experiment_name={name}", *tiny_overrides(tmp_path, corpus)])
        return pd.read_csv(train(config).metrics)["train/loss"].dropna().tolist()

    assert losses("a") == losses("b")


def test_overrides_reach_the_typed_config(tmp_path, corpus):
    config = compose_config(["variant=sep_qkv", "model=seed100m", "optim.lr=3e-4", "seed=7"])
    assert (config.variant.name, config.model.preset, config.optim.lr, config.seed) == \
        ("sep_qkv", "seed100m", 3e-4, 7)
    demo = compose_config(["experiment=demo"])
    assert (demo.experiment_name, demo.model.preset, demo.trainer.accelerator) == ("demo", "tiny", "cpu")
    study = compose_config(["experiment=seed_study", "data.paths=[x.txt]"])
    assert (study.model.preset, study.data.tokenizer.vocab_size, study.trainer.seq_len) == \
        ("seed100m", 35000, 4096)


def test_every_variant_config_matches_a_registry_key():
    yamls = sorted(p.stem for p in (CONFIGS / "variant").glob("*.yaml"))
    assert yamls == available_variants()
    for name in yamls:
        assert OmegaConf.load(CONFIGS / "variant" / f"{name}.yaml").name == name


@pytest.mark.parametrize("overrides, message", [
    (["trainer.max_steps=0"], "trainer.max_steps must be positive, got 0"),
    (["trainer.batch_size=-1"], "trainer.batch_size must be positive, got -1"),
    (["optim.lr=0"], "optim.lr must be positive, got 0.0"),
    (["model.preset=huge"], "unknown model preset 'huge'; available: gqa100m, seed100m, tiny"),
    (["variant.name=nope"], "unknown attention variant 'nope'; registered variants: baseline"),
    (["trainer.seq_len=64"], "trainer.seq_len=64 exceeds model.block_size=32"),
    (["model.n_head=3"], "n_embd=32 is not divisible by model.n_head=3"),
    (["trainer.precision=fp8"], "unknown trainer.precision 'fp8'"),
])
def test_invalid_values_fail_before_training(overrides, message, tmp_path, corpus):
    config = compose_config([*tiny_overrides(tmp_path, corpus), *overrides])
    with pytest.raises(ValueError, match=message):
        train(config)
    assert not find_runs(tmp_path / "runs")


def test_existing_run_directory_is_never_overwritten_silently(tmp_path, corpus):
    overrides = ["experiment_name=keep", *tiny_overrides(tmp_path, corpus)]
    run = train(compose_config(overrides))
    before = run.summary.read_text()
    with pytest.raises(FileExistsError, match="already exists; pass resume=auto"):
        train(compose_config(overrides))
    assert run.summary.read_text() == before
    train(compose_config([*overrides, "overwrite=true"]))
    moved = list(run.path.parent.glob("seed0.replaced-*"))
    assert len(moved) == 1 and (moved[0] / "summary.json").read_text() == before


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, str(REPO / "train.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def test_cli_multirun_sweep_writes_one_run_directory_per_job(tmp_path, corpus):
    result = _cli(["-m", "variant=baseline,qk_scale", "experiment_name=sweep",
                   *tiny_overrides(tmp_path, corpus)], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = find_runs(tmp_path / "runs", "sweep")
    assert sorted(r.path.parent.name for r in runs) == ["baseline", "qk_scale"]
    assert all(json.loads(r.summary.read_text())["steps"] == 4 for r in runs)


@pytest.mark.parametrize("args, message", [
    (["variant=nope"], "Could not find 'variant/nope'"),
    (["model=huge"], "Could not find 'model/huge'"),
    (["trainer.max_step=3"], "Key 'max_step' not in 'TrainerSection'"),
])
def test_cli_rejects_unknown_options_naming_them(args, message, tmp_path):
    result = _cli(args, cwd=tmp_path)
    assert result.returncode != 0
    assert message in result.stderr
    assert not (tmp_path / "results" / "runs").exists()


def test_cli_reports_bad_values_in_one_line(tmp_path, corpus):
    result = _cli([*tiny_overrides(tmp_path, corpus), "optim.lr=-1"], cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == "error: optim.lr must be positive, got -1.0"
    assert "Traceback" not in result.stderr

"""``logger=``: TensorBoard (default), W&B and MLflow, each beside the run's own metrics.csv and
summary.json. W&B runs offline and MLflow logs to a local file store, so nothing leaves the machine."""

import pandas as pd
import pytest

from attnlab.training import loggers
from attnlab.training.run import train
from test_training import compose_config, tiny_overrides


def _train(tmp_path, corpus, name, *overrides):
    return train(compose_config([f"experiment_name={name}", *tiny_overrides(tmp_path, corpus), *overrides]))


def _check_run_directory(run):
    """What evaluate.py reads is there whatever the logger."""
    assert run.load_summary()["steps"] == 4
    metrics = pd.read_csv(run.metrics)
    assert metrics["train/loss"].notna().sum() == 4 and metrics["val/loss"].notna().any()


def test_wandb_offline_logs_the_metrics_beside_the_run_directory(tmp_path, corpus, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    runs = [_train(tmp_path, corpus, "wb", "logger=wandb", f"seed={seed}") for seed in (0, 1)]
    assert wandb.run is None  # finished, so that the next run of a sweep starts its own
    for run in runs:
        _check_run_directory(run)
        assert not run.tensorboard.exists()
        offline = list((run.path / "wandb").glob("offline-run-*"))
        assert len(offline) == 1, offline  # one W&B run per training run, files in the run directory
        (records,) = offline[0].glob("run-*.wandb")
        data = records.read_bytes()
        for key in (b"train/loss", b"val/loss", b"val/ppl", b"trainer/global_step"):
            assert key in data, key
        assert f"baseline/seed{run.seed}".encode() in data  # the W&B run's name


def test_mlflow_logs_metrics_and_parameters_to_a_local_file_store(tmp_path, corpus, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps it on request only
    store = tmp_path / "mlruns"
    run = _train(tmp_path, corpus, "mlf", "logger=mlflow", f"logger.tracking_uri=file:{store}")
    _check_run_directory(run)
    assert not run.tensorboard.exists()
    (meta,) = [p for p in store.glob("*/*/meta.yaml") if (p.parent / "metrics").is_dir()]
    mlflow_run = meta.parent
    loss = (mlflow_run / "metrics" / "train" / "loss").read_text().splitlines()
    assert len(loss) == 4  # "<timestamp> <value> <step>" per step
    assert [int(line.split()[2]) for line in loss] == [0, 1, 2, 3]
    assert (mlflow_run / "metrics" / "val" / "loss").is_file()
    assert (mlflow_run / "params" / "seed").read_text() == "0"  # the whole configuration
    assert (mlflow_run / "tags" / "mlflow.runName").read_text() == "baseline/seed0"
    assert (meta.parent.parent / "meta.yaml").read_text().count("name: mlf") == 1  # experiment_name
    assert "status: 3" in meta.read_text()  # FINISHED


def test_tensorboard_is_the_default(tmp_path, corpus):
    run = _train(tmp_path, corpus, "tb")
    _check_run_directory(run)
    assert list(run.tensorboard.glob("events.out.tfevents.*"))
    assert run.load_config()["logger"]["name"] == "tensorboard"


def test_mlflow_to_a_refused_file_store_fails_before_any_work(tmp_path, corpus, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.environment_variables import MLFLOW_ALLOW_FILE_STORE

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "false")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert not MLFLOW_ALLOW_FILE_STORE.get()
    with pytest.raises(ValueError, match=r"logger=mlflow: this MLflow writes to a local directory "
                                         r"\(file:./mlruns\) only when MLFLOW_ALLOW_FILE_STORE=true"):
        _train(tmp_path, corpus, "refused", "logger=mlflow")
    assert not (tmp_path / "runs").exists()


def test_a_logger_whose_package_is_missing_fails_before_any_work(tmp_path, corpus, monkeypatch):
    monkeypatch.setitem(loggers.PACKAGES, "wandb", "attnlab_no_such_package")
    with pytest.raises(ValueError, match=r"logger=wandb needs the attnlab_no_such_package package, which is "
                                         r"not installed: pip install -e \"\.\[wandb\]\""):
        _train(tmp_path, corpus, "missing", "logger=wandb")
    assert not (tmp_path / "runs").exists()

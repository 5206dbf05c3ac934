"""Where a run's metrics go: the logger chosen with ``logger=`` (TensorBoard, W&B, MLflow),
and always the run directory's own ``metrics.csv`` (``RunCSVLogger``).

A resumed run (``resume=auto``) starts a new W&B / MLflow run of the same name; its
``metrics.csv`` continues the old one, and its TensorBoard events hide the old events from
the checkpoint's step on, which the resumed run logs again.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlparse

from lightning.pytorch.loggers import Logger, MLFlowLogger, TensorBoardLogger, WandbLogger

from attnlab.runs import RunDir
from attnlab.training.config import LoggerSection, TrainConfig
from attnlab.training.csv_logger import RunCSVLogger

# The package each optional logger needs, and the extra that installs it.
PACKAGES = {"wandb": "wandb", "mlflow": "mlflow"}


def check_logger(section: LoggerSection) -> None:
    """Fail before any work when ``logger=`` cannot log: its package is not installed, or
    (MLflow) the tracking store is a local directory that this MLflow refuses."""
    package = PACKAGES.get(section.name)
    if package is not None and importlib.util.find_spec(package) is None:
        raise ValueError(f"logger={section.name} needs the {package} package, which is not installed: "
                         f"pip install -e \".[{section.name}]\" (or choose logger=tensorboard)")
    if section.name == "mlflow" and urlparse(uri := _mlflow_uri(section)).scheme in ("", "file") \
            and not _mlflow_allows_file_store():
        raise ValueError(f"logger=mlflow: this MLflow writes to a local directory ({uri}) only when "
                         f"MLFLOW_ALLOW_FILE_STORE=true is set; set that, or logger.tracking_uri=<your "
                         f"tracking server> (or MLFLOW_TRACKING_URI)")


@contextmanager
def run_loggers(cfg: TrainConfig, run: RunDir, resumed_step: int | None = None) -> Iterator[list[Logger]]:
    """The chosen logger first (Lightning's ``trainer.logger``), then the run's metrics.csv;
    on leaving, the W&B run is closed, so that the next run in this process (a Hydra sweep)
    starts its own rather than logging into this one. ``resumed_step``: the step of the
    checkpoint a resumed run starts from."""
    section = cfg.logger
    if section.name == "tensorboard":
        chosen = _tensorboard(section, run, resumed_step)
    else:
        chosen = {"wandb": _wandb, "mlflow": _mlflow}[section.name](section, cfg, run)
    loggers = [chosen, RunCSVLogger(run.path, name="", version="")]
    try:
        yield loggers
    except BaseException:
        _finish(loggers, exit_code=1)
        raise
    _finish(loggers, exit_code=0)


def _finish(loggers: list[Logger], exit_code: int) -> None:
    for logger in loggers:
        if isinstance(logger, WandbLogger) and logger._experiment is not None:
            logger._experiment.finish(exit_code=exit_code)
            # finish() can return before W&B's service has written the run's offline file (once
            # read here holding only its header); teardown waits for it, so the file is whole when
            # train() returns, not only when the process exits.
            import wandb

            wandb.teardown(exit_code=exit_code)


def _run_name(section: LoggerSection, cfg: TrainConfig) -> str:
    return section.run_name or f"{cfg.variant.name}/seed{cfg.seed}"


def _tensorboard(section: LoggerSection, run: RunDir, resumed_step: int | None) -> Logger:
    # A run killed after its last checkpoint logged steps it will log again once resumed; the
    # writer's purge step tells TensorBoard to drop the old events from that step on, so each
    # step is drawn once (as metrics.csv keeps each step once, rundir.trim_metrics).
    purge = {} if resumed_step is None else {"purge_step": resumed_step}
    return TensorBoardLogger(run.path, name="tensorboard", version="", **purge, **section.options)


def _wandb(section: LoggerSection, cfg: TrainConfig, run: RunDir) -> Logger:
    return WandbLogger(name=_run_name(section, cfg), project=section.project or cfg.experiment_name,
                       save_dir=section.save_dir or str(run.path), offline=section.offline,
                       entity=section.entity, config=dataclasses.asdict(cfg), **section.options)


def _mlflow(section: LoggerSection, cfg: TrainConfig, run: RunDir) -> Logger:
    logger = MLFlowLogger(experiment_name=section.project or cfg.experiment_name,
                          run_name=_run_name(section, cfg), tracking_uri=_mlflow_uri(section),
                          **section.options)
    logger.log_hyperparams(dataclasses.asdict(cfg))  # the whole configuration, as run parameters
    return logger


def _mlflow_uri(section: LoggerSection) -> str:
    return section.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "file:./mlruns"


def _mlflow_allows_file_store() -> bool:
    """MLflow 3 keeps its file store in maintenance, refused unless MLFLOW_ALLOW_FILE_STORE is set."""
    try:
        from mlflow.environment_variables import MLFLOW_ALLOW_FILE_STORE
    except ImportError:  # an MLflow from before the opt-in
        return True
    return bool(MLFLOW_ALLOW_FILE_STORE.get())

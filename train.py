"""Train one attention variant: ``python train.py variant=sep_qkv`` (Hydra overrides, ``-m`` sweeps)."""

import logging
import os
import signal
import sys

import hydra
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from attnlab.training.config import TrainConfig, register_schema

register_schema()


@hydra.main(version_base=None, config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from attnlab.training.callbacks import record_stop_requests, stop_requested
    from attnlab.training.module import NonFiniteLossError, UntrainedParametersError
    from attnlab.training.run import TrainingInterrupted, train

    print_lightning_messages_once()
    joblib_worker = in_joblib_worker()
    if joblib_worker:
        record_stop_requests()
    try:
        try:
            config: TrainConfig = OmegaConf.to_object(cfg)
            check_launcher_can_start(config)
            run = train(config)
        except (ValueError, FileNotFoundError, FileExistsError, MissingMandatoryValue) as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)
        except (NonFiniteLossError, UntrainedParametersError) as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(1)
        except TrainingInterrupted as err:
            print(f"interrupted: {err}", file=sys.stderr)
            if joblib_worker:
                end_worker_once_the_others_saved(130)
            sys.exit(130)
        if joblib_worker and stop_requested():  # the signal came as the run was finishing: it is complete
            print("interrupted: SIGTERM as the run ended", file=sys.stderr)
            end_worker_once_the_others_saved(130)
    finally:
        if joblib_worker:  # an idle worker has nothing to save: SIGTERM ends it
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if run is None:  # nothing to train (ladder.lr=lower/higher inside the grid); the reason is logged
        return None
    summary = run.load_summary() if run.is_complete() else {}
    print(f"run directory: {run.path}")
    return summary.get("best_val_loss")  # what a Hydra sweeper would minimise


def end_worker_once_the_others_saved(code: int) -> None:
    """End this joblib worker. sys.exit would end the job, not the process: joblib's pool keeps its
    worker alive, idle, and the sweep that passed the signal on (attnlab/training/sweep_stop.py) waits
    for it. Ending breaks the pool, which kills the other workers: not before they have saved."""
    from attnlab.training.sweep_stop import wait_for_siblings_to_save

    wait_for_siblings_to_save()
    logging.shutdown()
    sys.stderr.flush()
    os._exit(code)


def in_joblib_worker() -> bool:
    from hydra.core.hydra_config import HydraConfig

    from attnlab.training.estimate import is_joblib

    return HydraConfig.initialized() and is_joblib(HydraConfig.get().launcher)


def check_launcher_can_start(config: TrainConfig) -> None:
    """joblib's launcher runs each job in a worker process of its own pool; Lightning cannot start
    DDP's processes from there (it re-runs the worker's command line), and the job dies with a
    parser error and a killed worker. Refuse before anything is written."""
    t = config.trainer
    if in_joblib_worker() and not t.one_process():
        raise ValueError(f"hydra/launcher=joblib runs each job in one process, but trainer.devices={t.devices!r}, "
                         f"trainer.num_nodes={t.num_nodes!r} would start several; run such jobs with the basic "
                         f"launcher (drop hydra/launcher=joblib) or hydra/launcher=slurm, or train on one device "
                         f"(trainer.devices=1)")


def print_lightning_messages_once() -> None:
    """Importing ``lightning`` gives its logger a console handler of its own, and its records
    still reach the root logger, whose console and ``train.log`` handlers Hydra set up: every
    Lightning message (the model summary among them) would print twice. Hydra's handlers keep
    them; without any (``hydra/job_logging=disabled``) Lightning's own stays."""
    lightning_logger = logging.getLogger("lightning")
    if logging.getLogger().handlers:
        for handler in [h for h in lightning_logger.handlers if type(h) is logging.StreamHandler]:
            lightning_logger.removeHandler(handler)


if __name__ == "__main__":
    main()

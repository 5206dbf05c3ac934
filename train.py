"""Train one attention variant: ``python train.py variant=sep_qkv`` (Hydra overrides, ``-m`` sweeps)."""

import logging
import sys

import hydra
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from attnlab.training.config import TrainConfig, register_schema

register_schema()


@hydra.main(version_base=None, config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from attnlab.training.module import NonFiniteLossError
    from attnlab.training.run import TrainingInterrupted, train

    print_lightning_messages_once()
    try:
        config: TrainConfig = OmegaConf.to_object(cfg)
        run = train(config)
    except (ValueError, FileNotFoundError, FileExistsError, MissingMandatoryValue) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except NonFiniteLossError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    except TrainingInterrupted as err:
        print(f"interrupted: {err}", file=sys.stderr)
        sys.exit(130)
    if run is None:  # nothing to train (ladder.lr=lower/higher inside the grid); the reason is logged
        return None
    summary = run.load_summary() if run.is_complete() else {}
    print(f"run directory: {run.path}")
    return summary.get("best_val_loss")  # what a Hydra sweeper would minimise


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

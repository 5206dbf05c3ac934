"""A Hydra callback that refuses, before any job starts, a sweep two of whose jobs would train
into one run directory (``<results_dir>/<experiment_name>/<variant>/seed<k>``; a ladder's
``<ladder>-<rung>-lr<rate>/<variant>/seed<k>``).

A grid over a setting the directory is not named by (``optim.lr=1e-3,3e-3``) would otherwise
stop at its second job once the first had trained, have the second continue the first under
``resume=auto`` (a 20-step run carried on to 40 steps, reported as both), or move it aside
under ``overwrite=true``. Registered for every run in ``configs/train.yaml``.
"""

from __future__ import annotations

import itertools
import logging
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict

from attnlab.ladder import member_name
from attnlab.training.estimate import sweep_values

log = logging.getLogger(__name__)

# Each of its values is a run directory of its own, whatever the other settings.
NAMES_THE_RUN = ("variant", "seed")


class DistinctRunDirectories(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        problem = shared_run_directory(config)
        if problem is not None:
            print(f"error: {problem}", file=sys.stderr)
            sys.exit(2)


def shared_run_directory(config: DictConfig) -> str | None:
    """What two jobs of the sweep ``config`` train into one run directory, or None. Each swept
    setting is varied alone, the others at their first value: a job is composed as the launcher
    composes it, and its run directory read off. A sweep this cannot read is let through (the
    job that finds its directory taken says so)."""
    values = sweep_values(config, any_sweeper=True)
    if values is None:
        return None
    first = {key: options[0] for key, options in values.items()}
    number = itertools.count()
    for key, options in values.items():
        if len(options) < 2 or (key in NAMES_THE_RUN and len(set(options)) == len(options)):
            continue  # not swept, or a value per run directory
        seen: dict[tuple, str] = {}
        for value in options:
            job = _compose(config, {**first, key: value}, next(number))
            where = None if job is None else _run_directory(job)
            if where is None:
                break
            if where in seen:
                return _message(key, seen[where], value, where, job)
            seen[where] = value
    return None


def _compose(config: DictConfig, overrides: dict[str, str], number: int) -> DictConfig | None:
    """Job ``number`` of the sweep, with what the launcher sets per job (its number and output
    directory: ``results_dir=${hydra:runtime.output_dir}/runs`` names each run apart)."""
    from hydra.core.global_hydra import GlobalHydra

    try:
        job = GlobalHydra.instance().config_loader().load_sweep_config(
            config, [f"{key}={value}" for key, value in overrides.items()])
        with open_dict(job):
            job.hydra.job.id = job.hydra.job.num = number
            job.hydra.runtime.output_dir = str(Path(job.hydra.sweep.dir) / str(job.hydra.sweep.subdir))
        return job
    except Exception as err:  # noqa: BLE001 - the job itself will report a bad override
        log.debug("cannot compose a job of the sweep: %s", err)
        return None


def _run_directory(job: DictConfig) -> tuple | None:
    """(results_dir, experiment, variant, seed, how a ladder's rate is chosen) as ``train`` names
    the run; None where it cannot be resolved here. A ladder's tuned or widened rate is read from
    earlier runs when the job starts: the same for jobs that differ only in another setting."""
    from hydra.core.hydra_config import HydraConfig

    hydra_config = HydraConfig.instance()
    before = hydra_config.cfg
    hydra_config.set_config(job)  # ${hydra:runtime.choices.battery} in an experiment_name
    try:
        ladder, chosen = OmegaConf.select(job, "ladder.name"), None
        if ladder is None:
            experiment = OmegaConf.select(job, "experiment_name")
        elif job.ladder.lr == "given":
            experiment = member_name(ladder, job.model.preset, float(job.optim.lr))
        else:
            experiment = f"{ladder}-{job.model.preset}-lr<{job.ladder.lr}>"
            chosen = (job.ladder.widen_factor, tuple(job.ladder.selection_seeds))
        return (str(job.results_dir), str(experiment), str(job.variant.name), int(job.seed), chosen)
    except Exception as err:  # noqa: BLE001 - let the job report it
        log.debug("cannot resolve a job's run directory: %s", err)
        return None
    finally:
        hydra_config.cfg = before


def _message(key: str, one: str, other: str, where: tuple, job: DictConfig) -> str:
    results_dir, experiment, variant, seed, _ = where
    bare = key.lstrip("+~")
    group = bare in (OmegaConf.select(job, "hydra.runtime.choices") or {})
    reference = f"${{hydra:runtime.choices.{bare}}}" if group else f"${{{bare}}}"
    if OmegaConf.select(job, "ladder.name") is not None:
        fix = ("a ladder names its runs by rung, rate, variant and seed alone: sweep this setting "
               "into another results_dir= per value")
    else:
        fix = (f"name each run by it, e.g. 'experiment_name={experiment}-{bare.rsplit('.', 1)[-1]}"
               f"{reference}', or sweep it in separate commands with another experiment_name= each")
    return (f"this sweep trains {key}={one} and {key}={other} into one run directory, "
            f"{results_dir}/{experiment}/{variant}/seed{seed}, which is named by experiment_name, "
            f"variant and seed only: the second job would stop, continue the first (resume=) or move it "
            f"aside (overwrite=true); {fix}. Nothing was trained")

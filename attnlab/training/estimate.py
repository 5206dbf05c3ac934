"""A Hydra callback that says, before any training, how long a run or a sweep will take.

Registered by an experiment (``configs/experiment/recall.yaml``)::

    hydra:
      callbacks:
        estimate:
          _target_: attnlab.training.estimate.TimeEstimate
          experiment: recall
          seconds_per_run: 45   # measured on the reference CPU
          steps: 2000           # ... at this trainer.max_steps,
          start_seconds: 8      # of which this long to start

prints ``recall: 42 runs x ~45 s ≈ 31.5 min`` when ``python train.py -m ...`` starts; with
``trainer.max_steps=500`` the training part is a quarter as long (``~17 s`` a run).
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from attnlab.ladder import widening

log = logging.getLogger(__name__)


class TimeEstimate(Callback):
    """``seconds_per_run``: one run on one core, measured at ``steps`` training steps (None: runs are
    not sized by trainer.max_steps, e.g. a ladder's budget), ``start_seconds`` of it to start.
    ``seconds_by_model``: one run per ``model=`` choice, where runs differ by size (a ladder's rungs);
    ``seconds_per_run`` stands for a choice not in it."""

    def __init__(self, experiment: str, seconds_per_run: float, steps: int | None = None,
                 start_seconds: float = 0.0, seconds_by_model: dict[str, float] | None = None) -> None:
        self.experiment = experiment
        self.seconds_per_run = seconds_per_run
        self.steps = steps
        self.start_seconds = start_seconds
        self.seconds_by_model = dict(seconds_by_model or {})

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        log.info(self.message(1, seconds=self.run_seconds(config)))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        workers = parallel_workers(config)
        warn_if_oversubscribed(workers)
        swept = sweep_values(config)
        models = (swept or {}).get("model") or [_model_choice(config)]
        runs = jobs_of(swept)
        if runs and len(models) > 1 and all(m in self.seconds_by_model for m in models):
            log.info(self.message_by_model(runs, models, workers))
        else:
            log.info(self.message(runs, workers, self.run_seconds(config, models[0])))

    def run_seconds(self, config: DictConfig, model: str | None = None) -> float:
        """A run of the configured model (``model``: that choice instead) and trainer.max_steps: the
        training part scaled from ``steps``."""
        model = model or _model_choice(config)
        if model in self.seconds_by_model:
            return self.seconds_by_model[model]
        max_steps = OmegaConf.select(config, "trainer.max_steps", default=None)
        if self.steps is None or not isinstance(max_steps, int) or max_steps == self.steps:
            return self.seconds_per_run
        return self.start_seconds + (self.seconds_per_run - self.start_seconds) * max_steps / self.steps

    def message(self, runs: int | None, workers: int = 1, seconds: float | None = None) -> str:
        seconds = self.seconds_per_run if seconds is None else seconds
        if runs is None:  # a sweeper whose jobs are not a grid of the overrides
            return f"{self.experiment}: ~{seconds:.0f} s per run"
        # Runs of equal length in waves of `workers` (seconds_per_run is one run on one core).
        total = math.ceil(runs / workers) * seconds
        at_once = f" on {workers} parallel workers" if workers > 1 else ""
        return (f"{self.experiment}: {runs} run{'s' if runs != 1 else ''} x ~{seconds:.0f} s{at_once} "
                f"≈ {total / 60:.1f} min")

    def message_by_model(self, runs: int, models: list[str], workers: int = 1) -> str:
        """A sweep of equal shares of ``runs`` per model choice, each share in waves of ``workers``."""
        share = runs / len(models)
        total = sum(math.ceil(share / workers) * self.seconds_by_model[m] for m in models)
        by_time = sorted(models, key=self.seconds_by_model.__getitem__)
        fastest, slowest = by_time[0], by_time[-1]
        at_once = f" on {workers} parallel workers" if workers > 1 else ""
        return (f"{self.experiment}: {runs} runs x ~{self.seconds_by_model[fastest]:.0f} s ({fastest}) to "
                f"~{self.seconds_by_model[slowest]:.0f} s ({slowest}){at_once} ≈ {total / 60:.1f} min")


def _model_choice(config: DictConfig) -> str | None:
    """The config group option chosen for ``model`` (``ladder/c2``), where Hydra recorded it."""
    return OmegaConf.select(config, "hydra.runtime.choices.model", default=None)


class WidenEstimate(TimeEstimate):
    """``experiment=ladder_widen``: of the sweep's jobs, only those at a choice on the edge of its
    grid train (attnlab/ladder.py ``widened_lr``); counts them from the runs already there."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        seeds = list(config.ladder.selection_seeds)
        swept = sweep_values(config) or {}
        # The sweep's own (variant, rung) pairs: model=ladder/c1 is the preset ladder_c1.
        rungs = [m.replace("/", "_") for m in swept["model"]] if "model" in swept else None
        try:
            pairs, lowest, highest = widening(config.results_dir, config.ladder.name, seeds,
                                              swept.get("variant"), rungs)
        except (OSError, ValueError) as err:  # an estimate must never stop the sweep; the jobs will say
            log.info(f"{self.experiment}: cannot count the runs to widen: {err}")
            return
        if pairs == 0:
            log.info(f"{self.experiment}: no tuning runs of ladder {config.ladder.name!r} under "
                     f"{config.results_dir} yet: python train.py -m experiment={config.ladder.name}_tune first")
        elif lowest + highest == 0:
            log.info(f"{self.experiment}: all {pairs} (variant, rung) choices under {config.results_dir} lie "
                     f"inside their grids: nothing to widen")
        else:
            runs = self.message((lowest + highest) * len(seeds), parallel_workers(config))
            log.info(f"{self.experiment}: of {pairs} (variant, rung) choices under {config.results_dir}, {lowest} "
                     f"at the lowest rate tried and {highest} at the highest; {runs.split(': ', 1)[1]} at "
                     f"selection seeds {', '.join(map(str, seeds))}; the sweep's other jobs have nothing to train")


def warn_if_oversubscribed(workers: int, cores: int | None = None) -> bool:
    """Say so when the launcher runs more runs at once than this process may use cores (the runs
    then share them: each is slower than one core's, and the estimate too short)."""
    cores = cores or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    if workers <= cores:
        return False
    log.warning(f"hydra.launcher.n_jobs={workers} runs more runs at once than the {cores} core(s) here: they share "
                f"them, each more slowly than the estimate below assumes; hydra.launcher.n_jobs={cores} runs one "
                f"per core")
    return True


def is_joblib(launcher: DictConfig) -> bool:
    """Whether ``hydra.launcher`` is hydra/launcher=joblib (each job in a worker process of a pool)."""
    return str(launcher.get("_target_", "")).endswith("JoblibLauncher")


def parallel_workers(config: DictConfig) -> int:
    """How many runs the launcher runs at once: ``n_jobs`` of hydra/launcher=joblib (-1: every
    core, as joblib counts them), else 1 (the basic launcher; Slurm's own queue decides there)."""
    launcher = config.hydra.launcher
    if not is_joblib(launcher):
        return 1
    n_jobs = int(launcher.get("n_jobs") or 1)
    if n_jobs < 0:
        import joblib

        n_jobs = max(1, joblib.cpu_count() + 1 + n_jobs)  # joblib's rule: -1 all, -2 all but one
    return n_jobs


def count_jobs(config: DictConfig) -> int | None:
    """The number of jobs Hydra's basic sweeper makes of the sweep overrides (``hydra.sweeper.params``,
    then the command line's, which win), as the product of each key's number of values; None
    for another sweeper or overrides that cannot be parsed here."""
    return jobs_of(sweep_values(config))


def jobs_of(swept: dict[str, list[str]] | None) -> int | None:
    """The basic sweeper's job count for ``sweep_values``' answer: the product of the values per key."""
    return None if swept is None else math.prod(len(values) for values in swept.values())


def sweep_values(config: DictConfig, any_sweeper: bool = False) -> dict[str, list[str]] | None:
    """Each key's values in the basic sweeper's jobs (``hydra.sweeper.params``, then the command
    line's, which win; one value for a key that is not swept); None for another sweeper (unless
    ``any_sweeper``: a search interval, as optuna's, stands as its two ends) or overrides that
    cannot be parsed here."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import IntervalSweep

    sweeper = config.hydra.sweeper
    if not any_sweeper and not str(sweeper.get("_target_", "")).endswith("BasicSweeper"):
        return None
    # As written: an override's ${...} is the job's to resolve ('experiment_name=lr${optim.lr}').
    params = [f"{key}={value}" for key, value in
              (OmegaConf.to_container(sweeper, resolve=False).get("params") or {}).items()]
    task = OmegaConf.to_container(config.hydra.overrides.task, resolve=False)
    try:
        parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
        values = {}
        for override in parser.parse_overrides([*params, *task]):
            if not override.is_sweep_override():
                values[override.get_key_element()] = [override.get_value_element_as_str()]
            elif isinstance(override.value(), IntervalSweep):
                interval = override.value()
                values[override.get_key_element()] = [str(interval.start), str(interval.end)]
            else:
                values[override.get_key_element()] = list(override.sweep_string_iterator())
    except Exception as err:  # noqa: BLE001 (an estimate must never stop the sweep)
        log.debug("cannot read the sweep's values: %s", err)
        return None
    return values

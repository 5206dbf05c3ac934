"""A sweep two of whose jobs would train into one run directory is refused before any job starts
(``attnlab/training/sweep_names.py``); a sweep whose settings each name their runs goes ahead.

The sweep's configuration is composed as ``python train.py -m ...`` composes it (multirun mode:
the sweep overrides left for the launcher), and each of its jobs as the launcher composes it.
"""

import subprocess
import sys
from pathlib import Path

import pytest
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.types import RunMode

from attnlab.training.config import register_schema
from attnlab.training.sweep_names import shared_run_directory

ROOT = Path(__file__).resolve().parents[1]


def _problem(overrides: list[str]) -> str | None:
    register_schema()
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base=None):
        loader = GlobalHydra.instance().config_loader()
        config = loader.load_configuration("train", overrides=overrides, run_mode=RunMode.MULTIRUN)
        return shared_run_directory(config)


@pytest.mark.parametrize("overrides", [
    ["variant=baseline,gelu_bias", "seed=0,1"],
    ["optim.lr=1e-3,3e-3", "experiment_name=lr${optim.lr}"],
    ["model=tiny,recall", "experiment_name=${hydra:runtime.choices.model}"],
    ["experiment=battery", "battery=icr-v16,icr-v64", "variant=baseline", "seed=0"],  # each task its experiment
    ["experiment=ladder_tune"],  # a ladder names its runs by rate: optim.lr=4e-3,8e-3,1.6e-2
    ["experiment=ladder_tune", "hydra/sweeper=optuna", "model=ladder/c2", "optim.lr=tag(log,interval(5e-4,3e-2))"],
    ["experiment=ladder", "model=ladder/c1,ladder/c2", "variant=baseline", "seed=0"],
    ["experiment=demo,zoo"],
    ["experiment=ladder_widen", "model=ladder/c1", "variant=baseline"],  # ladder.lr=lower,higher
    ["optim.lr=1e-3,3e-3", "results_dir=${hydra:runtime.output_dir}/runs"],  # a directory per job
    ["optim.lr=1e-3,3e-3", "experiment_name=run${hydra:job.num}"],
], ids=["variant-seed", "lr-named", "group-named", "battery", "ladder-tune", "ladder-optuna", "ladder-rungs",
        "experiments", "ladder-widen", "job-output-dir", "job-number"])
def test_a_sweep_whose_settings_name_their_runs_goes_ahead(overrides):
    assert _problem(overrides) is None


@pytest.mark.parametrize("overrides, setting, suggestion", [
    (["optim.lr=1e-3,3e-3"], "optim.lr=0.001 and optim.lr=0.003", "'experiment_name=default-lr${optim.lr}'"),
    (["variant=baseline,gelu_bias", "trainer.max_steps=20,40"], "trainer.max_steps=20 and trainer.max_steps=40",
     "'experiment_name=default-max_steps${trainer.max_steps}'"),
    (["model=tiny,recall"], "model=tiny and model=recall",
     "'experiment_name=default-model${hydra:runtime.choices.model}'"),
    (["experiment=zoo", "hydra/sweeper=optuna", "optim.lr=tag(log,interval(5e-4,3e-2))"],
     "optim.lr=0.0005 and optim.lr=0.03", "'experiment_name=zoo-lr${optim.lr}'"),
    (["seed=0,0"], "seed=0 and seed=0", "experiment_name="),
    (["experiment=ladder", "model=ladder/c1", "variant=baseline", "seed=0", "trainer.max_steps=20,40"],
     "trainer.max_steps=20 and trainer.max_steps=40", "another results_dir= per value"),
], ids=["lr", "max-steps", "group", "optuna", "repeated-seed", "ladder"])
def test_a_sweep_two_of_whose_jobs_share_a_run_directory_is_refused_naming_the_setting(overrides, setting, suggestion):
    problem = _problem(overrides)
    assert problem is not None and setting in problem and suggestion in problem and "Nothing was trained" in problem


@pytest.mark.slow
def test_the_refused_sweep_exits_before_anything_is_written(tmp_path):
    done = subprocess.run([sys.executable, "train.py", "-m", "optim.lr=1e-3,3e-3", "trainer.max_steps=20,40",
                           f"results_dir={tmp_path / 'runs'}", f"hydra.sweep.dir={tmp_path / 'hydra'}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error: this sweep trains optim.lr=0.001 and optim.lr=0.003")
    assert not (tmp_path / "runs").exists()

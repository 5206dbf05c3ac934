"""The training side of a run directory: locking and claiming it, finding the checkpoint to resume,
checking that a resumed run keeps the settings it was trained with, trimming metrics a
resumed run logs again, writing its config and tokenizer.

(``attnlab.runs.RunDir`` is the layout, and the reader evaluate and the notebooks use.)
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import yaml

from attnlab.atomic import atomic_write, remove_partial_writes
from attnlab.checkpoint import is_checkpoint
from attnlab.config import RUNTIME_SETTINGS, ModelConfig
from attnlab.data import PreparedData
from attnlab.runs import RunDir
from attnlab.training.config import TrainConfig

log = logging.getLogger(__name__)


@contextmanager
def run_lock(run: RunDir) -> Iterator[None]:
    """Hold the run's lock while this process trains it: a second process on the same run (a sweep
    started twice, a value repeated in one sweep) is refused, rather than training beside it into
    the same files. The lock file sits beside the run directory (``.seed<k>.lock``), so that
    ``overwrite=true`` moves no lock aside; a lock left by a killed process holds nothing."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    path = run.path.parent / f".{run.path.name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+", encoding="utf-8") as file:
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.seek(0)
            holder = file.read().strip() or "another process"
            raise FileExistsError(f"run directory {run.path} is being trained by {holder} (lock {path}); let it "
                                  f"finish, then resume=auto passes over it, or choose another "
                                  f"experiment_name=/seed=") from None
        except OSError as err:  # a file system without locks (some network mounts)
            log.warning("cannot lock %s (%s): a second process on this run would not be refused", path, err)
        file.seek(0)
        file.truncate()
        file.write(f"process {os.getpid()} on {socket.gethostname()}")
        file.flush()
        yield


def refuse_existing_run(run: RunDir, cfg: TrainConfig) -> None:
    """Fail at once, before data preparation (a tokenizer may take minutes to train), where the run
    directory exists and neither ``resume=`` nor ``overwrite=true`` says what to do with it."""
    check_writable(Path(cfg.results_dir))
    if cfg.resume or cfg.overwrite or not (run.path.exists() and any(run.path.iterdir())):
        return
    if cfg.ladder.name is not None:  # a ladder names its members itself: experiment_name is set over
        elsewhere = (f"or train the ladder into another results_dir= (a ladder names each run "
                     f"{cfg.ladder.name}-<rung>-lr<rate>/<variant>/seed<n>, whatever experiment_name is)")
    else:
        elsewhere = ("or choose another experiment_name=/seed=. A sweep over a setting the directory is "
                     "not named by (experiment_name/variant/seed), such as an optuna search over "
                     "optim.lr, names each run by it: 'experiment_name=lr${optim.lr}'")
    raise FileExistsError(
        f"run directory {run.path} already exists; pass resume=auto to continue it (a finished run "
        f"is left as it is), overwrite=true to replace it (the old one is moved aside), {elsewhere}")


def claim_run_dir(run: RunDir, cfg: TrainConfig) -> Path | None:
    """Decide what happens to an existing run directory; return the checkpoint to resume from.
    Called once every setting is checked (data and model included): with ``overwrite=true`` it
    moves the old run aside, which a run that then failed on a bad setting would leave hidden."""
    refuse_existing_run(run, cfg)
    if cfg.resume:
        if cfg.overwrite:  # e.g. `make demo`'s command with resume=auto added: it continues, as asked
            log.warning("resume=%s with overwrite=true: the run directory %s is continued, not replaced "
                        "(overwrite=true applies without resume=)", cfg.resume, run.path)
        for directory in (run.path, run.checkpoints):  # left by a process killed while writing
            remove_partial_writes(directory)
        ckpt = resume_checkpoint(run, cfg.resume)
        if ckpt is None and not run.is_complete():
            # Killed before its first checkpoint: nothing to continue, start again in place, its
            # curves too (TensorBoard would draw the old steps beside the new ones).
            for old in (run.metrics, *run.tensorboard.glob("events.out.tfevents.*")):
                old.unlink(missing_ok=True)
        return ckpt
    if run.path.exists() and any(run.path.iterdir()):  # overwrite=true (refuse_existing_run)
        aside = run.path.with_name(f"{run.path.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
        run.path.rename(aside)
        log.warning("moved the existing run directory aside to %s", aside)
    return None


def check_writable(directory: Path) -> None:
    """Fail before data preparation and training, not at the first checkpoint an hour later."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as err:
        raise ValueError(f"results_dir={str(directory)!r} is not writable ({err.strerror or err}); "
                         f"pass results_dir=<a writable directory>") from None


def resume_checkpoint(run: RunDir, resume: str | None) -> Path | None:
    """``resume=auto``: the run's last checkpoint, or None (a fresh start) when it has none
    yet, so that one command can be requeued after any preemption. An explicit path must exist."""
    if not resume:
        return None
    if resume == "auto":
        if is_checkpoint(run.last_checkpoint):
            return run.last_checkpoint
        if run.path.is_dir():  # started and stopped before its first checkpoint
            log.warning("resume=auto: no checkpoint at %s yet; starting the run from step 0",
                        run.last_checkpoint)
        else:  # a run a requeued or widened sweep adds: nothing unusual
            log.info("resume=auto: %s has not been started; starting it", run.path)
        return None
    ckpt = Path(resume)
    if not is_checkpoint(ckpt):
        raise FileNotFoundError(f"resume={resume!r}: no checkpoint file at {ckpt}; use "
                                f"resume=auto or the path of an existing .ckpt")
    return ckpt


# What a resumed run must keep: the settings that decide its trajectory (data and its order, the
# batches, the devices that share them, the optimiser and its schedule, the measure of validation)
# and what they resolved to (the model; the tokenizer and token counts the data gave). A resumed run
# that changed one would be neither the run it continues nor a fresh run with the new value. Where
# and how it runs (accelerator, precision, kernel, compile), what it logs, and how long it goes on
# (trainer.max_steps) may change.
FIXED_ON_RESUME = ("seed", "variant", "data", "trainer.batch_size", "trainer.accumulate_grad_batches",
                   "trainer.seq_len", "trainer.val_batches", "trainer.devices", "trainer.num_nodes", "optim",
                   "resolved_model", "resolved_data")
# Where the data cache is and how fast it is built; how the model is computed.
CHANGEABLE_ON_RESUME = ("data.cache_dir", "data.num_threads",
                        *(f"resolved_model.{key}" for key in sorted(RUNTIME_SETTINGS)))
# Under a token budget, the budget sets trainer.max_steps and optim.warmup_steps: it is what is kept.
FIXED_UNDER_A_BUDGET = ("budget.tokens_per_param", "budget.count", "budget.warmup_fraction", "budget.repeat_data")
SET_BY_A_BUDGET = ("optim.warmup_steps",)


def check_resume_keeps_settings(run: RunDir, settings: dict) -> None:
    """Refuse to resume ``run`` with other ``FIXED_ON_RESUME`` settings than its ``config.yaml``'s
    (``settings``: the resolved configuration, as ``config.yaml`` reads), naming each one. A setting
    the run's ``config.yaml`` lacks (added to attnlab since) counts at its default."""
    if not run.config.is_file():  # a checkpoint resumed into a new run directory: a deliberate fork
        return
    requested = _flatten(settings)
    written = _flatten(yaml.safe_load(run.config.read_text(encoding="utf-8")) or {})
    saved = {**_defaults(requested), **written}
    budget = requested.get("budget.tokens_per_param") is not None
    # Where the run recorded what its data resolved to, that says whether the data is the same: a
    # corpus moved to another path (a cluster's scratch directory) is.
    moved = ("data.paths",) if "resolved_data.tokenizer_sha256" in written else ()
    fixed = [key for key in requested if _under(key, FIXED_ON_RESUME) or (budget and key in FIXED_UNDER_A_BUDGET)]
    changed = [key for key in fixed
               if key not in (*CHANGEABLE_ON_RESUME, *moved) and not (budget and key in SET_BY_A_BUDGET)
               and key in saved and saved[key] != requested[key]]
    if changed:
        details = ", ".join(f"{key}={saved[key]!r} (now {requested[key]!r})" for key in changed)
        raise ValueError(f"resume: {run.path} was trained with {details}; a resumed run keeps the settings "
                         f"that decide its course. Resume it without these changes, or train a new run with "
                         f"them: another experiment_name=, or overwrite=true (the old directory is moved aside)")


def _under(key: str, sections: tuple[str, ...]) -> bool:
    return any(key == section or key.startswith(f"{section}.") for section in sections)


def _defaults(requested: dict) -> dict:
    """Flattened defaults of every setting (``TrainConfig()``'s, and the requested variant's options')."""
    from variants import get_variant
    from variants.registry import option_fields

    defaults = _flatten(yaml.safe_load(yaml.safe_dump(dataclasses.asdict(TrainConfig()))))
    try:
        options = option_fields(get_variant(requested.get("variant.name", "")))
    except ValueError:
        options = {}
    for key, (_, default) in options.items():
        defaults[f"variant.options.{key}"] = defaults[f"resolved_model.variant_options.{key}"] = default
    return defaults


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def trim_metrics(run: RunDir, step: int) -> None:
    """Drop rows logged after the checkpoint, which the resumed run will log again."""
    if run.metrics.is_file():
        frame = pd.read_csv(run.metrics)
        with atomic_write(run.metrics, newline="") as file:  # a kill mid-write leaves the old file, not half
            frame[frame["step"] < step].to_csv(file, index=False)


def resolved_config(cfg: TrainConfig, model_config: ModelConfig, prepared: PreparedData | None = None) -> dict:
    """What ``config.yaml`` holds: the training configuration, the model it resolved to and (with
    ``prepared``) what its data resolved to: the tokenizer and the token counts."""
    data = {} if prepared is None else {"resolved_data": {
        "tokenizer_sha256": prepared.tokenizer_sha256, "vocab_size": prepared.vocab_size,
        "train_tokens": prepared.train_tokens, "val_tokens": prepared.val_tokens}}
    return {**dataclasses.asdict(cfg), "resolved_model": model_config.to_dict(), **data}


def write_run_files(run: RunDir, cfg: TrainConfig, model_config: ModelConfig,
                    prepared: PreparedData) -> None:
    """``config.yaml`` (the resolved configuration) and the run's tokenizer (a synthetic task has none)."""
    run.path.mkdir(parents=True, exist_ok=True)
    with atomic_write(run.config, encoding="utf-8") as file:  # other ranks may read it (resume's check)
        file.write(yaml.safe_dump(resolved_config(cfg, model_config, prepared), sort_keys=False, allow_unicode=True))
    if prepared.tokenizer_path is not None:
        shutil.copyfile(prepared.tokenizer_path, run.tokenizer)

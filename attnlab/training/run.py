"""``train(cfg)``: one training run from a typed config to a complete run directory.

The recipe; each step's details live with their subject: ``rundir`` (claiming and resuming
the run directory), ``hardware`` (accelerator, precision), ``loggers``, ``trainer`` (callbacks
and Lightning settings), ``summary`` (what summary.json records besides the losses).
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import lightning as L
import torch
import yaml
from lightning.pytorch.utilities import rank_zero_only

from attnlab.checkpoint import check_checkpoint_matches, checkpoint_step
from attnlab.config import PRESETS
from attnlab.data import check_vocab_fits, prepare_data
from attnlab.flops import flops_per_token
from attnlab.ladder import check_one_setting, ladder_runs, member_name, tuned_lr, widened_lr
from attnlab.model import build_model
from attnlab.plan import check_fits_device, check_flex_head_size, slow_kernel_warning
from attnlab.runs import RunDir
from attnlab.training.budget import apply_budget
from attnlab.training.callbacks import SummaryCallback, TrainingInterrupted
from attnlab.training.config import TrainConfig
from attnlab.training.datamodule import TokenDataModule
from attnlab.training.hardware import (check_accelerator_available, check_kernel_can_train, choose_accelerator,
                                       choose_matmul_precision, choose_precision, should_compile)
from attnlab.training.loggers import check_logger, run_loggers
from attnlab.training.module import LanguageModelModule, NonFiniteLossError
from attnlab.training.rundir import (check_resume_keeps_settings, claim_run_dir, resolved_config,
                                     refuse_existing_run, resume_checkpoint, run_lock, trim_metrics,
                                     write_run_files)
from attnlab.training.summary import static_summary
from attnlab.training.trainer import build_trainer

log = logging.getLogger(__name__)
__all__ = ["TrainingInterrupted", "check_checkpoint_matches", "train"]  # imported from here


def train(cfg: TrainConfig, extra_callbacks: list[L.Callback] | None = None) -> RunDir | None:
    """Train one run; ``extra_callbacks`` are added to the Trainer's (e.g. from notebooks). None:
    nothing to train (a ``ladder.lr=lower``/``higher`` run whose grid needs no widening there)."""
    # The run's fp32 matmul precision is torch's global setting: restored after, so that the next
    # run in this process (a notebook's, an in-process sweep's) starts from its own.
    before = torch.get_float32_matmul_precision()
    try:
        with contextlib.ExitStack() as held:  # the run's lock, from its claim to the end of training
            return _train(cfg, extra_callbacks, held)
    finally:
        torch.set_float32_matmul_precision(before)


def _train(cfg: TrainConfig, extra_callbacks: list[L.Callback] | None, held: contextlib.ExitStack) -> RunDir | None:
    # 1. Resolve the configuration: every value checked, "auto" settings decided.
    cfg.validate()
    check_logger(cfg.logger)
    accelerator = choose_accelerator(cfg.trainer.accelerator)
    check_accelerator_available(accelerator)
    precision = choose_precision(cfg.trainer.precision, accelerator)
    check_kernel_can_train(cfg.model.attn_kernel, accelerator)
    if cfg.trainer.threads is not None:
        torch.set_num_threads(cfg.trainer.threads)
    matmul = choose_matmul_precision(cfg.trainer.float32_matmul_precision, accelerator)
    if matmul is not None:  # before the trainer reads the device's peak FLOP/s, which depends on it
        torch.set_float32_matmul_precision(matmul)
    if cfg.ladder.name is not None:  # one experiment per rung and learning rate (attnlab/ladder.py)
        if cfg.ladder.lr == "tuned":
            cfg.optim.lr = tuned_lr(cfg.results_dir, cfg.ladder.name, cfg.variant.name, cfg.model.preset,
                                    cfg.ladder.selection_seeds)
        elif cfg.ladder.lr in ("lower", "higher"):
            rate, why = widened_lr(cfg.results_dir, cfg.ladder.name, cfg.variant.name, cfg.model.preset,
                                   cfg.ladder.selection_seeds, cfg.ladder.lr, cfg.ladder.widen_factor, cfg.seed)
            log.info(why)
            if rate is None:
                return None
            cfg.optim.lr = rate
        cfg.experiment_name = member_name(cfg.ladder.name, cfg.model.preset, cfg.optim.lr)

    # Refuse a run whose estimated peak exceeds the GPU's memory, or whose forced FlexAttention cannot
    # compile at its head size, before anything is written, and say when its attention cannot be
    # fused (attnlab/plan.py); the preset's vocabulary stands in for the tokenizer's, not known yet.
    if accelerator == "gpu" and torch.cuda.is_available():
        planned = cfg.model.build(cfg.variant, PRESETS[cfg.model.preset]["vocab_size"], cfg.trainer.seq_len)
        check_flex_head_size(planned)
        capability = torch.cuda.get_device_capability(0)
        slow = slow_kernel_warning(planned, cfg.trainer.seq_len, cfg.trainer.batch_size, precision, capability)
        if slow is not None:
            log.warning(slow)
        check_fits_device(planned, cfg.trainer, torch.cuda.get_device_name(0),
                          memory_bytes=torch.cuda.get_device_properties(0).total_memory, precision=precision,
                          capability=capability)

    # 2. Claim the run directory, or find the checkpoint to resume. DDP workers started by
    # Lightning (or torchrun) re-run this function: only rank 0 claims and writes the directory.
    run = RunDir.for_run(cfg.results_dir, cfg.experiment_name, cfg.variant.name, cfg.seed)
    is_rank_zero = rank_zero_only.rank == 0
    if is_rank_zero:
        refuse_existing_run(run, cfg)

    # 3. Data and model, checked before the directory is claimed: overwrite=true moves the old run
    # aside, and a bad data setting found after that would leave it hidden.
    prepared = prepare_data(cfg.data)
    model_config = cfg.model.build(cfg.variant, prepared.vocab_size, cfg.trainer.seq_len)
    check_vocab_fits(prepared.vocab_size, model_config.vocab_size)
    apply_budget(cfg, model_config, None if prepared.task else prepared.train_tokens)
    unvalidated = cfg.trainer.validation_warning()  # with the steps a budget sets
    if unvalidated is not None and is_rank_zero:
        log.warning(unvalidated)
    settings = yaml.safe_load(yaml.safe_dump(resolved_config(cfg, model_config, prepared)))  # as config.yaml reads
    if cfg.trainer.seq_len > model_config.block_size:
        raise ValueError(f"trainer.seq_len={cfg.trainer.seq_len} exceeds model.block_size="
                         f"{model_config.block_size} of preset {model_config.name!r}; use "
                         f"trainer.seq_len<={model_config.block_size} or a larger model.block_size")
    prepared.check_fits(cfg.trainer.seq_len)
    if cfg.ladder.name is not None and is_rank_zero:  # before any compute: the ladder's runs must agree
        check_one_setting(ladder_runs(cfg.results_dir, cfg.ladder.name),
                          (cfg.variant.name, cfg.model.preset, settings, run.path))
    if is_rank_zero:
        held.enter_context(run_lock(run))
    ckpt_path = claim_run_dir(run, cfg) if is_rank_zero else resume_checkpoint(run, cfg.resume)
    done = run.load_summary() if cfg.resume and run.is_complete() else {}
    if (ckpt_path is not None or done) and is_rank_zero:  # before a metric row is trimmed
        check_resume_keeps_settings(run, settings)
    if done and (done.get("steps", 0) >= cfg.trainer.max_steps or
                 (done.get("diverged") and cfg.trainer.nonfinite_loss == "stop")):
        # A requeued sweep (resume=auto) passes over its finished runs, leaving their files as they are
        # (a tuning run that diverged too, unless it is to go on skipping non-finite batches).
        log.info("%s is finished (%d of %d steps): nothing to resume", run.path, done.get("steps", 0),
                 cfg.trainer.max_steps)
        return run
    resumed_step = None
    if ckpt_path is not None:
        try:
            check_checkpoint_matches(ckpt_path, model_config)
            resumed_step = checkpoint_step(ckpt_path)
        except ValueError as err:
            other = (f", e.g. {run.best_checkpoint}" if run.best_checkpoint.is_file()
                     and run.best_checkpoint.resolve() != Path(ckpt_path).resolve() else "")
            raise ValueError(f"{err}; to go on, resume with the model it was trained with, or from another "
                             f"checkpoint (resume=<path>.ckpt{other}), or train a new run: another "
                             f"experiment_name=, or overwrite=true (the old directory is moved aside)") from None
        if is_rank_zero:
            trim_metrics(run, resumed_step)
    L.seed_everything(cfg.seed, workers=True)
    # Dynamo's caches belong to the process: every model's blocks share Block.forward's, and the eager
    # FlexAttention wrapper one more. Runs of a sweep in one process (Hydra's basic launcher) would
    # fill its recompile limit (8 graphs) within three variants, and later runs would train eager.
    torch._dynamo.reset()
    model = build_model(model_config, seed=cfg.seed)
    model.activation_checkpointing = cfg.trainer.activation_checkpointing
    if should_compile(cfg.trainer.compile, accelerator):
        model.compile_blocks()
    t = cfg.trainer
    tokens_per_batch = t.batch_size * t.seq_len
    module = LanguageModelModule(model, cfg.optim, t.max_steps,
                                 flops_per_batch=flops_per_token(model_config, t.seq_len) * tokens_per_batch,
                                 nonfinite_loss=t.nonfinite_loss, log_accuracy=prepared.task is not None)
    datamodule = TokenDataModule(prepared, t.seq_len, t.batch_size, cfg.seed, t.num_workers)

    # 4. Fit; SummaryCallback writes summary.json when the last step is done.
    if is_rank_zero:
        write_run_files(run, cfg, model_config, prepared)
    summary = SummaryCallback(run.summary, static_summary(cfg, model_config, prepared, precision))
    with run_loggers(cfg, run, resumed_step) as loggers:
        trainer = build_trainer(cfg, run, accelerator, precision, loggers, summary, extra_callbacks or [])
        try:
            trainer.fit(module, datamodule=datamodule, ckpt_path=str(ckpt_path) if ckpt_path else None)
        except NonFiniteLossError as err:
            if cfg.ladder.name is None or cfg.seed not in cfg.ladder.selection_seeds:
                raise
            # A ladder's tuning run: divergence says the rate is too high; the sweep goes on.
            summary.write_diverged(trainer, module, str(err))
            log.warning("learning rate %g diverged; recorded in %s: %s", cfg.optim.lr, run.summary, err)
    return run

"""A NaN/Inf loss stops the run naming the step and the last good checkpoint, or skips
the batch when asked; no checkpoint is ever written from a NaN model."""

import math

import lightning as L
import pandas as pd
import pytest
import torch

from attnlab.checkpoint import checkpoint_step
from attnlab.runs import RunDir
from attnlab.training.module import MAX_CONSECUTIVE_SKIPS, NonFiniteLossError
from attnlab.training.run import train
from test_training import compose_config, tiny_overrides

pytestmark = pytest.mark.slow  # training runs


class PoisonLoss(L.Callback):
    """Makes the model's output NaN for the batches of the given steps, as an overflow would,
    and records whether the parameters moved during those steps."""

    def __init__(self, steps: set[int]) -> None:
        self.steps = steps
        self.moved: dict[int, bool] = {}
        self._before: list[torch.Tensor] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step not in self.steps:
            return
        model = pl_module.model
        real_forward = model.forward

        def nan_forward(*args, **kwargs):
            del model.forward  # one batch only
            return real_forward(*args, **kwargs) * math.nan

        model.forward = nan_forward
        self._before = [p.detach().clone() for p in model.parameters()]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._before:
            after = list(pl_module.model.parameters())
            self.moved[len(self.moved)] = any(not torch.equal(a, b) for a, b in zip(self._before, after))
            self._before = []


def _overrides(tmp_path, corpus, name, *extra):
    return [f"experiment_name={name}", *tiny_overrides(tmp_path, corpus), "trainer.max_steps=8",
            "trainer.val_every_n_steps=2", "trainer.checkpoint_every_n_steps=2", *extra]


def test_nan_loss_stops_naming_the_step_and_the_last_good_checkpoint(tmp_path, corpus):
    run = RunDir.for_run(tmp_path / "runs", "nan_stop", "baseline", 0)
    with pytest.raises(NonFiniteLossError, match=r"non-finite training loss \(nan\) at step 5 .*"
                                                 r"last good checkpoint: .*last.ckpt \(step 4\)"):
        train(compose_config(_overrides(tmp_path, corpus, "nan_stop")), extra_callbacks=[PoisonLoss({5})])
    assert checkpoint_step(run.last_checkpoint) == 4
    best = torch.load(run.best_checkpoint, map_location="cpu", weights_only=False)
    assert all(torch.isfinite(v).all() for v in best["state_dict"].values())
    assert not run.summary.exists(), "a stopped run is not mistaken for a finished one"


def test_skip_policy_skips_the_update_and_finishes(tmp_path, corpus):
    poison = PoisonLoss({3, 6})
    run = train(compose_config(_overrides(tmp_path, corpus, "nan_skip", "trainer.nonfinite_loss=skip")),
                extra_callbacks=[poison])
    assert poison.moved == {0: False, 1: False}, "no parameter moved on a poisoned batch"
    summary = run.load_summary()
    assert summary["steps"] == 8 and math.isfinite(summary["final_val_loss"])
    skipped = pd.read_csv(run.metrics)["train/skipped_batches"].dropna()
    assert sorted(set(skipped)) == [1.0, 2.0]


def test_skip_policy_still_stops_a_diverged_run(tmp_path, corpus):
    steps = set(range(2, 2 + MAX_CONSECUTIVE_SKIPS + 1))
    cfg = _overrides(tmp_path, corpus, "nan_many", "trainer.nonfinite_loss=skip", "trainer.max_steps=20")
    with pytest.raises(NonFiniteLossError, match=f"{MAX_CONSECUTIVE_SKIPS} batches in a row"):
        train(compose_config(cfg), extra_callbacks=[PoisonLoss(steps)])


def test_unknown_policy_names_the_allowed_ones(tmp_path, corpus):
    with pytest.raises(ValueError, match="unknown trainer.nonfinite_loss 'ignore'; allowed: stop, skip"):
        train(compose_config(_overrides(tmp_path, corpus, "nan_bad", "trainer.nonfinite_loss=ignore")))


def test_a_ladder_tuning_run_that_diverges_records_it_and_a_requeue_passes_over_it(tmp_path, corpus):
    # Divergence at a selection seed says the rate is too high: the sweep must go on, and the
    # rate must read as tried-and-failed (attnlab/ladder.py), not as missing.
    from attnlab.ladder import ladder_frame, ladder_runs, select_learning_rates

    ladder = ["ladder.name=lad", "seed=100", "model.preset=ladder_c1", "model.block_size=32"]
    cfg = _overrides(tmp_path, corpus, "unused", *ladder)
    run = train(compose_config(cfg), extra_callbacks=[PoisonLoss({5})])
    summary = run.load_summary()
    assert summary["diverged"].startswith("non-finite training loss (nan) at step 5")
    assert summary["final_val_loss"] is None and summary["steps"] == 5
    problems = run.problems()  # ordinary evaluations leave it out, saying why
    assert len(problems) == 1 and problems[0].startswith("diverged: non-finite training loss (nan) at step 5")
    frame = ladder_frame(ladder_runs(tmp_path / "runs", "lad"))
    assert math.isnan(frame["loss"].iloc[0]) and select_learning_rates(frame, [100]).empty
    before = {p: p.read_bytes() for p in run.path.rglob("*") if p.is_file()}
    assert train(compose_config([*cfg, "resume=auto"])).path == run.path
    assert {p: p.read_bytes() for p in run.path.rglob("*") if p.is_file()} == before
    # Outside the selection seeds (a compared run) divergence is an error, as for any run.
    with pytest.raises(NonFiniteLossError):
        train(compose_config([*_overrides(tmp_path, corpus, "x", *ladder[:1], *ladder[2:]), "seed=0"]),
              extra_callbacks=[PoisonLoss({5})])

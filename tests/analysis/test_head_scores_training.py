"""HeadScoresCallback: heads/* beside val/loss at every validation, and no change to the run itself."""

import lightning as L
import pandas as pd

from attnlab.analysis.head_scores import SUMMARIES
from attnlab.training import trainer as trainer_module
from attnlab.training.run import train

from .conftest import compose_config, tiny_overrides

KEYS = [f"heads/{name}" for name in SUMMARIES]


def _overrides(tmp_path, corpus, name: str) -> list[str]:
    # Two heads, so that the summaries run over several heads per layer.
    return [f"experiment_name={name}", *tiny_overrides(tmp_path, corpus), "model.n_head=2"]


def test_head_summaries_are_logged_at_every_validation_to_metrics_csv_and_tensorboard(tmp_path, corpus):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = train(compose_config(_overrides(tmp_path, corpus, "heads")))
    metrics = run.load_metrics()
    assert set(KEYS) <= set(metrics.columns)
    logged = metrics.dropna(subset=["heads/induction_max"])
    # validation every 2 of the 4 steps: on the rows of val/loss, nowhere else
    assert logged["step"].tolist() == metrics.dropna(subset=["val/loss"])["step"].tolist()
    assert len(logged) == 2 and logged[KEYS].notna().all().all()
    assert (logged["heads/induction_max"] >= logged["heads/induction_mean"]).all()
    for key in ("heads/sink_mean", "heads/entropy_norm_mean", "heads/induction_max", "heads/prev_token_max"):
        assert logged[key].between(0, 1).all(), key  # softmax weights: every score is in [0, 1]
    # metrics.csv stays narrow: the summaries only, no column per layer or head
    assert len([c for c in pd.read_csv(run.metrics).columns if c.startswith("heads/")]) == len(KEYS)
    events = EventAccumulator(str(next(run.tensorboard.rglob("events.out.tfevents.*")))).Reload()
    assert set(KEYS) <= set(events.Tags()["scalars"])


def test_the_probe_changes_no_loss_of_the_run(tmp_path, corpus, monkeypatch):
    def losses(run):
        frame = run.load_metrics()
        return frame["train/loss"].dropna().tolist(), frame["val/loss"].dropna().tolist()

    with_probe = train(compose_config(_overrides(tmp_path, corpus, "with")))
    monkeypatch.setattr(trainer_module, "HeadScoresCallback", L.Callback)
    without = train(compose_config(_overrides(tmp_path, corpus, "without")))
    assert "heads/induction_max" not in without.load_metrics()
    assert losses(with_probe) == losses(without)  # exactly: the probe draws from its own generator

"""An interrupted run resumed with resume=auto reproduces the uninterrupted run exactly."""

import logging
import os
import signal
from types import SimpleNamespace

import lightning as L
import pandas as pd
import pytest
import yaml

from attnlab.training.run import TrainingInterrupted, train
from test_training import compose_config, tiny_overrides


class PreemptAt(L.Callback):
    """Sends this process SIGTERM during a step, as a cluster scheduler would; with ``rank``, only
    that rank's process (a scheduler preempting one process of a distributed run)."""

    def __init__(self, step: int, rank: int | None = None, signum: int = signal.SIGTERM) -> None:
        self.step, self.rank, self.signum = step, rank, signum

    def on_before_optimizer_step(self, trainer, *args) -> None:
        if trainer.global_step == self.step and self.rank in (None, trainer.global_rank):
            os.kill(os.getpid(), self.signum)


def _overrides(tmp_path, corpus, name):
    return [f"experiment_name={name}", *tiny_overrides(tmp_path, corpus), "trainer.max_steps=8",
            "trainer.val_every_n_steps=4", "trainer.checkpoint_every_n_steps=2"]


def test_resume_after_interruption_gives_identical_losses(tmp_path, corpus):
    straight = train(compose_config(_overrides(tmp_path, corpus, "straight")))

    cfg = _overrides(tmp_path, corpus, "interrupted")
    with pytest.raises(TrainingInterrupted, match="stopped by SIGTERM at step 6"):
        train(compose_config(cfg), extra_callbacks=[PreemptAt(5)])
    interrupted_run = straight.path.parents[2] / "interrupted" / "baseline" / "seed0"
    assert (interrupted_run / "checkpoints" / "last.ckpt").is_file()
    assert not (interrupted_run / "summary.json").exists()
    resumed = train(compose_config([*cfg, "resume=auto"]))

    def losses(run):
        frame = pd.read_csv(run.metrics)
        return frame.dropna(subset=["train/loss"]).set_index("step")["train/loss"]

    a, b = losses(straight), losses(resumed)
    assert list(a.index) == list(b.index) and len(a) == 8
    assert a.tolist() == b.tolist()  # exactly equal on CPU fp32
    # Files get open()'s permissions (the umask's), not the owner-only ones of a temporary file.
    umask = os.umask(0o022)
    os.umask(umask)
    assert {p.stat().st_mode & 0o777 for p in (resumed.last_checkpoint, resumed.metrics, resumed.summary,
                                               resumed.config)} == {0o666 & ~umask}
    sa, sb = straight.load_summary(), resumed.load_summary()
    for key in ("steps", "tokens_seen", "final_train_loss", "final_val_loss", "best_val_loss"):
        assert sa[key] == sb[key], key
    # The throughput monitor's running counts go on from the checkpoint's, as the losses do
    counts = {run: pd.read_csv(run.metrics).dropna(subset=["train/samples"]).set_index("step")
              for run in (straight, resumed)}
    for column in ("train/batches", "train/samples"):
        assert counts[resumed][column].tolist() == counts[straight][column].tolist(), column
    assert counts[resumed]["train/time"].is_monotonic_increasing


@pytest.mark.skipif(not hasattr(signal, "SIGUSR2"), reason="no SIGUSR2 on this system")
class SignalOnTrainStart(L.Callback):
    """SIGTERM in the window where Lightning's own handler, not the stop's, has it."""

    def on_train_start(self, trainer, *args) -> None:
        os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.parametrize("when", ["while-set-up", "lightnings-handler"])
def test_a_sigterm_before_the_stop_has_its_handler_stops_the_run_at_its_first_step(tmp_path, corpus, when):
    """A joblib worker's run set up (its SIGTERMs recorded, train.py) or Lightning's own handler set
    (which only notes it): the run still saves its first step and stops, not trains on."""
    from attnlab.checkpoint import checkpoint_step
    from attnlab.training.callbacks import record_stop_requests

    previous = signal.getsignal(signal.SIGTERM)
    try:
        extra = [SignalOnTrainStart()]
        if when == "while-set-up":
            record_stop_requests()
            os.kill(os.getpid(), signal.SIGTERM)
            extra = []
        with pytest.raises(TrainingInterrupted, match="stopped by SIGTERM at step 1"):
            train(compose_config(_overrides(tmp_path, corpus, "early")), extra_callbacks=extra)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert checkpoint_step(tmp_path / "runs" / "early" / "baseline" / "seed0" / "checkpoints" / "last.ckpt") == 1


def test_a_launchers_time_limit_signal_saves_the_step_then_hands_the_signal_to_the_launcher(tmp_path, corpus):
    """Submitit signals a job's time limit with SIGUSR2 and requeues it from its handler, which ends
    the process: the step in progress is finished and saved first, then the launcher's handler runs."""
    from attnlab.checkpoint import checkpoint_step

    cfg = _overrides(tmp_path, corpus, "timed_out")
    last = tmp_path / "runs" / "timed_out" / "baseline" / "seed0" / "checkpoints" / "last.ckpt"
    handed = []

    def launcher(signum, frame):  # as submitit's: requeue the job, then end the process
        handed.append((signum, checkpoint_step(last)))
        raise SystemExit(-1)

    previous = signal.signal(signal.SIGUSR2, launcher)
    try:
        with pytest.raises(SystemExit):
            train(compose_config(cfg), extra_callbacks=[PreemptAt(5, signum=signal.SIGUSR2)])
        assert signal.getsignal(signal.SIGUSR2) is launcher  # handed back
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert handed == [(signal.SIGUSR2, 6)]  # the signalled step, saved before the handover
    resumed = train(compose_config([*cfg, "resume=auto"]))
    assert resumed.load_summary()["steps"] == 8


@pytest.mark.skipif(not hasattr(signal, "SIGUSR2"), reason="no SIGUSR2 on this system")
def test_a_time_limit_signal_named_sigterm_hands_sigterm_to_the_launcher_and_restores_it(tmp_path, monkeypatch):
    """SUBMITIT_PREEMPT_SIGNAL=TERM: submitit's own SIGTERM handler is the one kept and called, not
    the stop's (SIGTERM is listed once)."""
    from attnlab.training.callbacks import GracefulStop

    def launcher(signum, frame):
        pass

    monkeypatch.setenv("SUBMITIT_PREEMPT_SIGNAL", "TERM")
    previous = signal.signal(signal.SIGTERM, launcher)
    try:
        stop = GracefulStop(tmp_path / "last.ckpt")
        stop.on_train_start(SimpleNamespace(received_sigterm=False), None)  # no signal before training
        assert stop.time_limit == signal.SIGTERM and stop._previous[signal.SIGTERM] is launcher
        stop.on_train_end(None, None)
        assert signal.getsignal(signal.SIGTERM) is launcher
    finally:
        signal.signal(signal.SIGTERM, previous)


class CrashAt(L.Callback):
    """Fails during a step without saving, as a lost node or an out-of-memory kill would: the
    steps logged since the last checkpoint are logged again when the run resumes."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_before_optimizer_step(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError("node lost")


def test_a_run_resumed_from_an_older_checkpoint_shows_each_step_once(tmp_path, corpus):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = _overrides(tmp_path, corpus, "crashed")
    with pytest.raises(RuntimeError, match="node lost"):
        train(compose_config(cfg), extra_callbacks=[CrashAt(5)])
    resumed = train(compose_config([*cfg, "resume=auto"]))
    assert len(list(resumed.tensorboard.glob("events.out.tfevents.*"))) == 2
    events = EventAccumulator(str(resumed.tensorboard))  # TensorBoard's own reader, as its UI reads
    events.Reload()
    csv = pd.read_csv(resumed.metrics).dropna(subset=["train/loss"])
    for tag in ("train/loss", "val/loss"):
        steps = [e.step for e in events.Scalars(tag)]
        assert steps == sorted(set(steps)), (tag, steps)  # step 4 was logged before the crash and again after
    assert [e.step for e in events.Scalars("train/loss")] == csv["step"].tolist() == list(range(8))
    assert [e.value for e in events.Scalars("train/loss")] == pytest.approx(csv["train/loss"].tolist(), rel=1e-6)


def test_resume_auto_without_a_checkpoint_starts_from_scratch(tmp_path, corpus, caplog):
    # What a requeued job killed before its first checkpoint needs: the same command works.
    with caplog.at_level(logging.INFO, logger="attnlab.training.rundir"):
        run = train(compose_config([*_overrides(tmp_path, corpus, "fresh"), "resume=auto"]))
    assert run.load_summary()["steps"] == 8
    # A run that was never started (a sweep widened with resume=auto) starts without a warning
    assert [(r.levelname, r.getMessage().split(":")[0]) for r in caplog.records if "resume=auto" in r.getMessage()] \
        == [("INFO", "resume=auto")]
    # Killed before its first checkpoint: started again in place, its old curves gone with it.
    cfg = _overrides(tmp_path, corpus, "early")
    with pytest.raises(RuntimeError, match="node lost"):
        train(compose_config(cfg), extra_callbacks=[CrashAt(1)])  # the first checkpoint comes at step 2
    crashed = run.path.parents[2] / "early" / "baseline" / "seed0"
    assert not (crashed / "checkpoints" / "last.ckpt").exists() and list((crashed / "tensorboard").iterdir())
    caplog.clear()
    again = train(compose_config([*cfg, "resume=auto"]))
    assert "resume=auto: no checkpoint at" in caplog.text  # started and stopped: worth a warning
    (events,) = again.tensorboard.glob("events.out.tfevents.*")  # the crashed run's file is gone
    assert pd.read_csv(again.metrics).dropna(subset=["train/loss"])["step"].tolist() == list(range(8))


def test_resume_auto_passes_over_a_finished_run_leaving_its_files_as_they_are(tmp_path, corpus):
    # A requeued sweep resumes every job: the finished ones must not be rewritten (their summary
    # keeps the commit and timings they trained with).
    cfg = _overrides(tmp_path, corpus, "done")
    run = train(compose_config(cfg))
    before = {p: p.read_bytes() for p in run.path.rglob("*") if p.is_file()}
    again = train(compose_config([*cfg, "resume=auto"]))
    assert again.path == run.path
    assert {p: p.read_bytes() for p in run.path.rglob("*") if p.is_file()} == before
    with pytest.raises(ValueError, match=r"was trained with resolved_model.n_embd=32 \(now 64\)"):
        train(compose_config([*cfg, "resume=auto", "model.n_embd=64"]))  # checked before it is passed over
    longer = train(compose_config([*cfg, "resume=auto", "trainer.max_steps=14"]))  # more steps: it continues
    assert longer.load_summary()["steps"] == 14
    # past the schedule's end (step 8, as the run was started) the rate stays at its floor, lr x min_lr_ratio
    frame = pd.read_csv(longer.metrics).dropna(subset=["lr-AdamW/pg1"]).set_index("step")["lr-AdamW/pg1"]
    assert list(frame.index) == list(range(14)) and frame.loc[:7].is_monotonic_decreasing
    assert frame.loc[8:].tolist() == pytest.approx([0.002 * 0.1] * 6, rel=1e-12), frame.loc[6:].tolist()


def test_resuming_with_a_setting_that_decides_the_run_is_refused_leaving_its_files(tmp_path, corpus):
    cfg = _overrides(tmp_path, corpus, "changed")
    with pytest.raises(TrainingInterrupted):
        train(compose_config(cfg), extra_callbacks=[PreemptAt(3)])
    run_files = lambda run_dir: {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}  # noqa: E731
    run_dir = tmp_path / "runs" / "changed" / "baseline" / "seed0"
    before = run_files(run_dir)
    with pytest.raises(ValueError, match=rf"resume: {run_dir} was trained with optim.lr=0.002 \(now 0.01\), "
                                         r"trainer.batch_size=2 \(now 4\); a resumed run keeps the settings that "
                                         r"decide its course\. .* another experiment_name=, or overwrite=true"):
        train(compose_config([*cfg, "resume=auto", "optim.lr=0.01", "trainer.batch_size=4"]))
    assert run_files(run_dir) == before
    # A run written before a setting existed (its config.yaml lacks data.encoding) resumes.
    config = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    del config["data"]["encoding"]
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    # Where it runs, what it logs and how long: these may change.
    resumed = train(compose_config([*cfg, "resume=auto", "model.attn_kernel=explicit", "trainer.max_steps=10",
                                    "trainer.log_every_n_steps=2", "data.num_threads=1"]))
    assert resumed.load_summary()["steps"] == 10


def test_resume_from_a_missing_file_names_it(tmp_path, corpus):
    missing = tmp_path / "nowhere.ckpt"
    with pytest.raises(FileNotFoundError, match=f"resume='{missing}': no checkpoint file at"):
        train(compose_config([*_overrides(tmp_path, corpus, "fresh"), f"resume={missing}"]))


@pytest.mark.parametrize("change, message", [
    ("variant=qk_scale", "different model .*variant: checkpoint 'baseline' vs requested 'qk_scale'"),
    ("model.n_embd=64", r"different model .*n_embd: checkpoint 32 vs requested 64\); to go on, resume with the "
                        r"model it was trained with, or from another checkpoint"),
], ids=["variant", "preset"])
def test_resuming_a_checkpoint_of_another_variant_or_preset_is_refused(tmp_path, corpus, change, message):
    run = train(compose_config(_overrides(tmp_path, corpus, "other")))
    cfg = [*_overrides(tmp_path, corpus, "other2"), change, f"resume={run.last_checkpoint}"]
    with pytest.raises(ValueError, match=message):
        train(compose_config(cfg))


def test_a_truncated_checkpoint_is_reported_not_loaded(tmp_path, corpus):
    bad = tmp_path / "broken.ckpt"
    bad.write_bytes(b"PK\x03\x04 not really a checkpoint")
    cfg = [*_overrides(tmp_path, corpus, "trunc"), f"resume={bad}"]
    with pytest.raises(ValueError, match="is not a readable checkpoint"):
        train(compose_config(cfg))


def test_a_torch_file_that_is_not_a_training_checkpoint_is_refused(tmp_path, corpus):
    import torch

    other = tmp_path / "weights.pt"
    torch.save({"weight": torch.zeros(2)}, other)
    with pytest.raises(ValueError, match="is not an attnlab training checkpoint"):
        train(compose_config([*_overrides(tmp_path, corpus, "notckpt"), f"resume={other}"]))



def test_a_run_resumed_under_another_kernel_is_still_evaluated(tmp_path, corpus):
    """The attention kernel is a runtime setting: resuming with another one must not make
    evaluation refuse the run's checkpoints (it once refused a best.ckpt written before)."""
    from attnlab.checkpoint import load_checkpoint_config

    cfg = [*_overrides(tmp_path, corpus, "kernel"), "trainer.max_steps=4", "trainer.val_every_n_steps=2"]
    run = train(compose_config(cfg))
    default_kernel = load_checkpoint_config(run.best_checkpoint)["attn_kernel"]
    assert default_kernel != "explicit"
    # A few more steps under the explicit kernel, without validation: best.ckpt stays the
    # one written under the default kernel, last.ckpt and config.yaml say "explicit".
    resumed = train(compose_config([*cfg, "trainer.max_steps=6", "trainer.val_every_n_steps=100",
                                    "model.attn_kernel=explicit", "resume=auto"]))
    assert resumed.path == run.path and resumed.load_summary()["steps"] == 6
    assert run.load_config()["resolved_model"]["attn_kernel"] == "explicit"
    assert load_checkpoint_config(run.best_checkpoint)["attn_kernel"] == default_kernel
    assert load_checkpoint_config(run.last_checkpoint)["attn_kernel"] == "explicit"
    for which in ("best", "last"):
        model = run.load_model(which)  # what evaluate.py and the notebooks load
        assert model.config.variant == "baseline" and not model.training

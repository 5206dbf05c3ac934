"""train.py end to end on tiny settings: run directories, overrides, sweeps and config errors."""

import json
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from attnlab.runs import find_runs
from attnlab.training.config import TrainConfig, register_schema
from attnlab.training.run import train
from variants import available_variants

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


def tiny_overrides(tmp_path: Path, corpus: Path) -> list[str]:
    """A model and run small enough to train 4 steps in a few seconds on one CPU core."""
    return [
        f"results_dir={tmp_path / 'runs'}",
        "trainer=cpu", "trainer.progress_bar=false",
        "trainer.max_steps=4", "trainer.batch_size=2", "trainer.seq_len=16",
        "trainer.val_every_n_steps=2", "trainer.val_batches=2", "trainer.log_every_n_steps=1",
        "model.n_layer=2", "model.n_embd=32", "model.intermediate_size=64", "model.block_size=32",
        "optim.warmup_steps=1",
        "data=text", f"data.paths=[{corpus}]", f"data.cache_dir={corpus.parent / 'cache'}",
        "data.tokenizer.vocab_size=1000", "data.tokenizer.character_coverage=0.98",
        "data.val_fraction=0.2",
    ]


def write_demo_sample(path: Path) -> Path:
    """Real ja/en prose from the bundled demo corpus: 60 Japanese and 30 English documents."""
    import lzma

    with lzma.open(REPO / "data/demo/corpus.jsonl.xz", "rt", encoding="utf-8") as src:
        lines = [line for _, line in zip(range(4000), src)]
    ja = [ln for ln in lines if '"lang": "ja"' in ln][:60]
    en = [ln for ln in lines if '"lang": "en"' in ln][:30]
    path.write_text("".join(ja + en), encoding="utf-8")
    return path


def compose_config(overrides: list[str]) -> TrainConfig:
    register_schema()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        cfg = compose(config_name="train", overrides=overrides)
    return OmegaConf.to_object(cfg)


@pytest.mark.parametrize("variant", available_variants())
def test_every_variant_trains_and_leaves_a_complete_run_directory(variant, tmp_path, corpus):
    # Two heads: every registered variant can use them (talking_heads and diff_attn need >= 2).
    config = compose_config([f"variant={variant}", "experiment_name=unit", *tiny_overrides(tmp_path, corpus),
                             "model.n_head=2"])
    run = train(config)
    assert run.path == tmp_path / "runs" / "unit" / variant / "seed0"
    summary = run.load_summary()
    assert summary["variant"] == variant and summary["steps"] == 4
    assert summary["tokens_seen"] == 4 * 2 * 16
    assert summary["final_val_loss"] is not None and summary["best_val_loss"] <= summary["final_val_loss"]
    assert summary["parameters"]["total"] > 0 and summary["git_commit"] is not None
    for path in (run.config, run.metrics, run.tokenizer, run.last_checkpoint, run.best_checkpoint):
        assert path.is_file(), path
    assert list(run.tensorboard.rglob("events.out.tfevents.*"))
    metrics = pd.read_csv(run.metrics)
    assert {"train/loss", "val/loss", "val/ppl"} <= set(metrics.columns)
    assert metrics["train/loss"].notna().sum() == 4


def test_same_seed_gives_identical_losses_and_data_order(tmp_path, corpus):
    def losses(name):
        config = compose_config([f"experiment_name={name}", *tiny_overrides(tmp_path, corpus)])
        return pd.read_csv(train(config).metrics)["train/loss"].dropna().tolist()

    assert losses("a") == losses("b")


def test_overrides_reach_the_typed_config(tmp_path, corpus):
    config = compose_config(["variant=sep_qkv", "model=seed100m", "optim.lr=3e-4", "seed=7"])
    assert (config.variant.name, config.model.preset, config.optim.lr, config.seed) == \
        ("sep_qkv", "seed100m", 3e-4, 7)
    demo = compose_config(["experiment=demo"])
    assert (demo.experiment_name, demo.model.preset, demo.trainer.accelerator) == ("demo", "tiny", "cpu")
    study = compose_config(["experiment=seed_study", "data.paths=[x.txt]"])
    assert (study.model.preset, study.data.tokenizer.vocab_size, study.trainer.seq_len) == \
        ("seed100m", 35000, 4096)


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml")))
def test_every_shipped_experiment_validates_its_last_step(experiment):
    """A final loss older than the model (or none at all) would be every run's of that experiment."""
    text = ["data.paths=[x.txt]"] if experiment == "seed_study" else []  # its corpus is the user's
    trainer = compose_config([f"experiment={experiment}", *text]).trainer
    assert trainer.validation_warning() is None


def test_a_run_that_never_validates_its_last_steps_is_told_so():
    from attnlab.training.config import TrainerSection

    never = TrainerSection(max_steps=30, val_every_n_steps=250).validation_warning()
    assert never.startswith("trainer.max_steps=30 < trainer.val_every_n_steps=250: this run never validates")
    assert never.endswith("set trainer.val_every_n_steps=30 (or less) to evaluate it")
    late = TrainerSection(max_steps=7600, val_every_n_steps=250).validation_warning()
    assert "the last validation is at step 7500, so final_val_loss is 100 steps older" in late
    assert "set trainer.max_steps=7750" in late


def test_the_variant_config_group_is_derived_from_the_registry():
    register_schema()
    from hydra.core.config_store import ConfigStore

    group = ConfigStore.instance().repo["variant"]
    assert sorted(name.removesuffix(".yaml") for name in group) == available_variants()
    assert not (CONFIGS / "variant").exists()  # nothing to keep in sync by hand
    gated = compose_config(["variant=gated_attn", "variant.options.granularity=headwise"])
    assert (gated.variant.name, dict(gated.variant.options)) == ("gated_attn", {"granularity": "headwise"})
    assert dict(compose_config(["variant=sigmoid_attn"]).variant.options) == {"n": "seq_len", "qk_norm": True}


def test_a_variant_registered_after_the_schema_is_stored_still_composes():
    # register_schema skips storing when the registry has not changed since its last call.
    from dataclasses import dataclass

    from variants.baseline import BaselineAttention
    from variants.registry import register, unregister

    compose_config([])

    @register("throwaway_late")
    class Late(BaselineAttention):
        """Baseline with one option, registered after the schema was stored."""

        @dataclass(frozen=True)
        class Options:
            width: int = 3

    try:
        late = compose_config(["variant=throwaway_late"])
        assert (late.variant.name, dict(late.variant.options)) == ("throwaway_late", {"width": 3})
    finally:
        unregister("throwaway_late")


@pytest.mark.parametrize("overrides, message", [
    (["trainer.max_steps=0"], "trainer.max_steps must be a positive integer, got 0"),
    (["trainer.batch_size=-1"], "trainer.batch_size must be a positive integer, got -1"),
    (["optim.lr=0"], "optim.lr must be positive, got 0.0"),
    (["model.preset=huge"], "unknown model preset 'huge'; available: gqa100m, "),
    (["variant.name=nope"], "unknown attention variant 'nope'; registered variants: .*baseline, "),
    (["trainer.seq_len=64"], "trainer.seq_len=64 exceeds model.block_size=32"),
    (["model.n_head=3"], "n_embd=32 is not divisible by model.n_head=3"),
    (["trainer.precision=fp8"], "unknown trainer.precision 'fp8'"),
    (["model.n_query_groups=3"], "not divisible by model.n_query_groups=3"),
    (["model.vocab_size=500"],
     "tokenizer vocab_size 1000 exceeds model vocab_size 500; set the model.s vocab_size >= 1000"),
    (["data.source=web"], "unknown data.source 'web'; allowed: demo, text, hf"),
    (["model.attn_kernel=flash9"], "unknown attention kernel 'flash9' .*available: auto, sdpa, flex, explicit"),
    (["variant=sigmoid_attn", "model.attn_kernel=sdpa"],
     "attn_kernel='sdpa' cannot run variant 'sigmoid_attn'.*kernels that can: auto, explicit"),
    (["variant=gated_attn", "variant.options.gates=2"],  # no "+": a misspelt option gets our message
     "variant 'gated_attn' has no option\\(s\\) 'gates'; allowed: granularity"),
    (["variant=gated_attn", "+variant.options.gates=2"],
     "variant 'gated_attn' has no option\\(s\\) 'gates'; allowed: granularity"),
    (["variant.options.window=8"], "variant 'baseline' has no option\\(s\\) 'window'"),
    (["variant=gated_attn", "variant.options.granularity=rowwise"],
     "variant.options.granularity='rowwise' is not valid .*one of elementwise\\|headwise"),
    (["variant=talking_heads"], "talking_heads mixes across heads, so it needs model.n_head >= 2; got 1"),
    (["model.attn_kernel=flex"], "model.attn_kernel=flex cannot train on accelerator='cpu'.*attn_kernel=auto"),
])
def test_invalid_values_fail_before_training(overrides, message, tmp_path, corpus):
    with pytest.raises(ValueError, match=message):  # at composition or at train()'s checks
        train(compose_config([*tiny_overrides(tmp_path, corpus), *overrides]))
    assert not find_runs(tmp_path / "runs")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine whose torch sees no GPU")
def test_a_gpu_run_on_a_machine_without_one_stops_before_writing_anything(tmp_path, corpus):
    with pytest.raises(ValueError, match="trainer.accelerator='gpu' but no CUDA device is visible .*trainer=cpu"):
        train(compose_config([*tiny_overrides(tmp_path, corpus), "trainer=gpu"]))
    assert not (tmp_path / "runs").exists()  # no run directory to trip over when rerun


def test_existing_run_directory_is_never_overwritten_silently(tmp_path, corpus):
    overrides = ["experiment_name=keep", *tiny_overrides(tmp_path, corpus)]
    run = train(compose_config(overrides))
    before = run.summary.read_text()
    with pytest.raises(FileExistsError, match="already exists; pass resume=auto"):
        train(compose_config(overrides))
    assert run.summary.read_text() == before
    # overwrite=true with a bad data or model setting fails before the old run is moved aside
    for bad, message in ((f"data.paths=[{tmp_path / 'nowhere'}/*.txt]", "data.paths: no files match"),
                         ("trainer.seq_len=4096", "trainer.seq_len=4096 exceeds model.block_size"),
                         ("trainer.seq_len=65536 model.block_size=65536",
                          r"the validation split has [\d,]+ tokens \(1 file\(s\) from .*docs.jsonl\), too few for "
                          r"one window of trainer.seq_len=65536 \(\+1 target\); lower trainer.seq_len, add text, "
                          r"or raise data.val_fraction")):
        with pytest.raises(ValueError, match=message):
            train(compose_config([*overrides, "overwrite=true", *bad.split()]))
        assert run.summary.read_text() == before and not list(run.path.parent.glob("seed0.replaced-*"))
    train(compose_config([*overrides, "overwrite=true"]))
    moved = list(run.path.parent.glob("seed0.replaced-*"))
    assert len(moved) == 1 and (moved[0] / "summary.json").read_text() == before


def test_a_run_another_process_is_training_is_refused(tmp_path, corpus):
    import fcntl

    overrides = ["experiment_name=busy", *tiny_overrides(tmp_path, corpus)]
    lock = tmp_path / "runs" / "busy" / "baseline" / ".seed0.lock"
    lock.parent.mkdir(parents=True)
    with open(lock, "w") as other:  # what a second training process on this run holds
        other.write("process 4242 on node7")
        other.flush()
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        for extra in ([], ["resume=auto"], ["overwrite=true"]):
            with pytest.raises(FileExistsError, match=r"run directory .*busy/baseline/seed0 is being trained by "
                                                      r"process 4242 on node7 \(lock .*\.seed0\.lock\); let it finish"):
                train(compose_config([*overrides, *extra]))
            assert not (lock.parent / "seed0").exists()
    run = train(compose_config(overrides))  # the other process is gone: its lock file holds nothing
    assert run.load_summary()["steps"] == 4


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, str(REPO / "train.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def test_cli_sweep_of_every_variant_by_2_seeds_then_evaluation_over_all_of_them(tmp_path, corpus):
    # Every registered variant (Hydra's glob over the group derived from the registry) through
    # train.py itself, with two heads so that every variant can run.
    variants = available_variants()
    started = time.perf_counter()
    result = _cli(["-m", "variant=glob(*)", "seed=0,1", "experiment_name=sweep",
                   *tiny_overrides(tmp_path, corpus), "model.block_size=64", "model.n_head=2"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    trained = time.perf_counter()
    runs = find_runs(tmp_path / "runs", "sweep")
    assert sorted((r.path.parent.name, r.path.name) for r in runs) == \
        sorted((v, f"seed{k}") for v in variants for k in (0, 1))
    for run in runs:
        assert json.loads(run.summary.read_text())["steps"] == 4
        assert run.config.is_file() and run.metrics.is_file() and run.tokenizer.is_file()
        assert run.last_checkpoint.is_file() and run.best_checkpoint.is_file()
        assert list((run.path / "tensorboard").glob("events.out.tfevents.*"))
    # Lightning's messages once per run, through Hydra's handlers (train.py's print_lightning_messages_once)
    assert (result.stdout + result.stderr).count("Trainable params") == len(runs)

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    evaluation = subprocess.run(
        [sys.executable, str(REPO / "evaluate.py"), "experiment=sweep", f"runs_dir={tmp_path / 'runs'}",
         'prompts=["海の見える町は、","the sea."]', "sampling.max_new_tokens=8", "heatmap_layers=[1]"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert evaluation.returncode == 0, evaluation.stderr[-3000:]
    aggregate = pd.read_csv(tmp_path / "sweep" / "tables" / "aggregate.csv")
    assert sorted(aggregate["variant"]) == sorted(variants) and (aggregate["n"] == 2).all()
    assert all((tmp_path / "sweep" / "heatmaps" / v / "layer1_head0.png").is_file() for v in variants)
    print(f"{len(variants)}x2 sweep: training {trained - started:.1f} s, "
          f"evaluation {time.perf_counter() - trained:.1f} s")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="child processes are read from Linux's /proc")
def test_a_sigterm_to_a_parallel_sweep_reaches_its_workers_which_save_and_stop(tmp_path, corpus):
    """`kill <pid of python train.py -m hydra/launcher=joblib ...>`: the launching process passes
    it to the worker processes, each saves its step and exits, and no run is left training."""
    import fcntl
    import signal

    from attnlab.checkpoint import checkpoint_step

    args = [str(REPO / "train.py"), "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "trainer.threads=1",
            "variant=baseline,gelu_bias", "experiment_name=stopped", *tiny_overrides(tmp_path, corpus),
            "trainer.max_steps=100000", "trainer.val_every_n_steps=100000", "trainer.checkpoint_every_n_steps=100000",
            f"hydra.sweep.dir={tmp_path / 'hydra'}"]
    sweep = subprocess.Popen([sys.executable, *args], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)},
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    runs = [tmp_path / "runs" / "stopped" / v / "seed0" for v in ("baseline", "gelu_bias")]
    deadline = time.monotonic() + 300
    while not all((run / "metrics.csv").is_file() for run in runs):  # both training (a row logged)
        assert sweep.poll() is None and time.monotonic() < deadline, sweep.communicate()[0][-3000:]
        time.sleep(0.5)
    sweep.send_signal(signal.SIGTERM)
    output, _ = sweep.communicate(timeout=180)
    assert sweep.returncode == 128 + signal.SIGTERM, output[-3000:]
    for run in runs:
        assert (run / "checkpoints" / "last.ckpt").is_file(), output[-3000:]  # saved on the signal
        assert checkpoint_step(run / "checkpoints" / "last.ckpt") > 0, output[-3000:]
        with open(run.parent / ".seed0.lock") as lock:  # no process trains it any more
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_a_multi_process_run_under_the_joblib_launcher_is_refused_before_anything_is_written(tmp_path, corpus):
    result = _cli(["-m", "hydra/launcher=joblib", *tiny_overrides(tmp_path, corpus), "trainer.devices=2",
                   f"hydra.sweep.dir={tmp_path / 'sweep'}"], cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert ("error: hydra/launcher=joblib runs each job in one process, but trainer.devices=2, "
            "trainer.num_nodes=1 would start several") in result.stderr
    assert not (tmp_path / "runs").exists()


def test_sweep_through_the_submitit_launcher_and_the_slurm_example_config(tmp_path, corpus):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    # The Slurm example composes (Slurm itself is not here) ...
    register_schema()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        slurm = compose(config_name="train", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
    assert slurm.hydra.launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert slurm.hydra.launcher.max_num_timeout == 3
    # ... and the same plugin runs a real sweep as local jobs, with resume=auto as advised.
    result = _cli(["-m", "hydra/launcher=submitit_local", f"hydra.launcher.submitit_folder={tmp_path / 'jobs'}",
                   "variant=baseline,qk_scale", "experiment_name=jobs", "resume=auto",
                   *tiny_overrides(tmp_path, corpus)], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = find_runs(tmp_path / "runs", "jobs")
    assert sorted(r.path.parent.name for r in runs) == ["baseline", "qk_scale"]
    assert all(r.is_complete() for r in runs)


def test_unwritable_results_dir_fails_before_any_work(tmp_path, corpus):
    blocker = tmp_path / "a_file"
    blocker.write_text("keep me")
    cfg = compose_config([*tiny_overrides(tmp_path, corpus), f"results_dir={blocker / 'runs'}"])
    with pytest.raises(ValueError, match=f"results_dir='{blocker / 'runs'}' is not writable"):
        train(cfg)
    assert blocker.read_text() == "keep me"


@pytest.mark.parametrize("args, message", [
    (["variant=nope"], "Could not find 'variant/nope'\n\nAvailable options in 'variant':\n"),
    (["model=huge"], "Could not find 'model/huge'\n\nAvailable options in 'model':\n\tgqa100m"),
    (["data=web"], "Could not find 'data/web'\n\nAvailable options in 'data':\n\tcompression\n\tdemo"),
    (["trainer=tpu"], "Could not find 'trainer/tpu'\n\nAvailable options in 'trainer':\n\tcpu"),
    (["trainer.max_step=3"], "Key 'max_step' not in 'TrainerSection'"),
])
def test_cli_rejects_unknown_options_naming_them(args, message, tmp_path):
    result = _cli(args, cwd=tmp_path)
    assert result.returncode != 0
    assert message in result.stderr
    assert not (tmp_path / "results" / "runs").exists()


def test_cli_reports_bad_values_in_one_line(tmp_path, corpus):
    result = _cli([*tiny_overrides(tmp_path, corpus), "optim.lr=-1"], cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == "error: optim.lr must be positive, got -1.0"
    assert "Traceback" not in result.stderr


def test_trainer_peak_flops_gives_the_logged_mfu(tmp_path, corpus, caplog):
    """MFU = the model FLOP/s Lightning's monitor measures over the given peak (here a CPU, which
    has no peak of its own, so without trainer.peak_flops no MFU is logged). The layer table at the
    start counts one forward pass over a micro-batch, not Lightning's 0 without an example input."""
    from lightning.pytorch.utilities.model_summary.model_summary import get_human_readable_count

    overrides = ["experiment_name=unit", *tiny_overrides(tmp_path, corpus), "trainer.max_steps=6"]
    with caplog.at_level(logging.INFO, logger="lightning.pytorch.callbacks.model_summary"):
        run = train(compose_config([*overrides, "trainer.peak_flops=1e9"]))
    metrics = pd.read_csv(run.metrics)
    forward = run.load_summary()["flops_per_token"] * 2 * 16 / 3  # trainer.batch_size=2, seq_len=16
    assert re.search(rf"^{re.escape(get_human_readable_count(round(forward)))}\s+Total Flops$", caplog.text,
                     re.MULTILINE), caplog.text
    rows = metrics.dropna(subset=["train/device/mfu"])
    assert len(rows) > 0
    assert (rows["train/device/mfu"] == rows["train/device/flops_per_sec"] / 1e9).all()
    plain = pd.read_csv(train(compose_config([*overrides, "seed=1"])).metrics)
    assert "train/device/flops_per_sec" in plain.columns and "train/device/mfu" not in plain.columns


class ClippedNorms(L.Callback):
    """Each step's gradient norm after clipping, and whether the optimizer is the fused AdamW."""

    def __init__(self):
        self.norms, self.fused = [], None

    def on_train_batch_end(self, trainer, pl_module, *args):  # this step's gradients, clipped
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        self.norms.append(float(torch.linalg.vector_norm(torch.stack([g.float().norm() for g in grads]))))
        self.fused = trainer.optimizers[0].defaults["fused"]


def test_bf16_mixed_clips_gradients_with_the_fused_optimizer(tmp_path, corpus):
    """trainer=gpu's precision with the fused AdamW and clipping: Lightning's mixed-precision plugin
    refuses to clip for an optimizer that unscales gradients itself, which bf16 never needs."""
    seen = ClippedNorms()
    run = train(compose_config(["experiment_name=unit", *tiny_overrides(tmp_path, corpus),
                                "trainer.precision=bf16-mixed", "optim.grad_clip=0.001"]), [seen])
    assert run.load_summary()["steps"] == 4 and seen.fused
    assert len(seen.norms) == 4 and max(seen.norms) <= 0.001 * 1.001, seen.norms


def test_16_mixed_with_a_gradient_scaler_takes_the_unfused_optimizer_and_clips_unscaled(tmp_path):
    """16-mixed scales its gradients: the AdamW is unfused, so Lightning unscales them before it
    clips. (Lightning turns 16-mixed into bf16-mixed on a CPU, so the scaler is given here.)"""
    from lightning.pytorch.plugins import MixedPrecision
    from torch.utils.data import DataLoader, TensorDataset

    from attnlab.model import build_model
    from attnlab.training.config import OptimConfig
    from attnlab.training.module import LanguageModelModule
    from conftest import tiny_config

    module = LanguageModelModule(build_model(tiny_config()), OptimConfig(warmup_steps=1, grad_clip=0.001), 3)
    tokens = torch.randint(0, 100, (6, 17))
    data = DataLoader(TensorDataset(tokens[:, :-1], tokens[:, 1:]), batch_size=2)
    seen = ClippedNorms()
    scaled = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))
    trainer = L.Trainer(accelerator="cpu", max_steps=3, gradient_clip_val=0.001, plugins=[scaled], callbacks=[seen],
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, default_root_dir=tmp_path)
    trainer.fit(module, data)
    assert seen.fused is False and len(seen.norms) == 3 and max(seen.norms) <= 0.001 * 1.001, seen.norms


def test_a_parameter_without_a_gradient_stops_the_run_before_its_first_update(tmp_path):
    """A parameter the step never differentiates (here one the forward never reads; on a GPU, a
    compiled kernel dropping a term's gradient) would silently never train: the first optimizer
    step is refused, naming it, and no weight has moved."""
    from torch.utils.data import DataLoader, TensorDataset

    from attnlab.model import build_model
    from attnlab.training.config import OptimConfig
    from attnlab.training.module import LanguageModelModule, UntrainedParametersError
    from conftest import tiny_config

    model = build_model(tiny_config("qk_scale"))
    model.blocks[1].attn.unread = torch.nn.Parameter(torch.zeros(3))
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    module = LanguageModelModule(model, OptimConfig(warmup_steps=1), 3)
    tokens = torch.randint(0, 100, (6, 17))
    trainer = L.Trainer(accelerator="cpu", max_steps=3, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        default_root_dir=tmp_path)
    with pytest.raises(UntrainedParametersError,
                       match=r"1 parameter\(s\) of variant 'qk_scale' got no gradient.*: blocks\.1\.attn\.unread\. "
                             r"Stopped before the first update.*model\.attn_kernel=explicit"):
        trainer.fit(module, DataLoader(TensorDataset(tokens[:, :-1], tokens[:, 1:]), batch_size=2))
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), before[name], rtol=0, atol=0, msg=name)


def test_validation_throughput_counts_forward_flops_only(tmp_path, corpus):
    metrics = pd.read_csv(train(compose_config(["experiment_name=unit", *tiny_overrides(tmp_path, corpus),
                                                "trainer.max_steps=6"])).metrics)
    per_batch = {}
    for stage in ("train", "validate"):
        rows = metrics.dropna(subset=[f"{stage}/device/flops_per_sec"])
        assert len(rows) > 0, stage
        per_batch[stage] = (rows[f"{stage}/device/flops_per_sec"] / rows[f"{stage}/device/batches_per_sec"]).median()
    assert per_batch["validate"] == pytest.approx(per_batch["train"] / 3, rel=0.05)


def test_float32_matmul_precision_is_resolved_set_and_recorded(tmp_path, corpus):
    from attnlab.training.hardware import choose_matmul_precision

    assert choose_matmul_precision("auto", "gpu") == "high"  # TF32 on a GPU, as Lightning advises
    assert choose_matmul_precision("auto", "cpu") is None  # torch's own setting stays
    assert choose_matmul_precision("highest", "gpu") == "highest"
    from attnlab.training.callbacks import Float32MatmulPrecision

    class SeenInSetup(L.Callback):  # what a spawned worker would train at: set again by a callback
        def setup(self, trainer, pl_module, stage):
            self.precision = torch.get_float32_matmul_precision()
            self.callbacks = [type(c).__name__ for c in trainer.callbacks]

    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("highest")
        seen = SeenInSetup()
        run = train(compose_config(["experiment_name=unit", *tiny_overrides(tmp_path, corpus),
                                    "trainer.float32_matmul_precision=medium"]), [seen])
        assert run.load_summary()["float32_matmul_precision"] == "medium"
        assert seen.precision == "medium" and Float32MatmulPrecision.__name__ in seen.callbacks
        assert torch.get_float32_matmul_precision() == "highest"  # restored: the next run starts from its own
        auto = train(compose_config(["experiment_name=unit", *tiny_overrides(tmp_path, corpus), "seed=1"]))
        assert auto.load_summary()["float32_matmul_precision"] == "highest"  # auto on a CPU: untouched
    finally:
        torch.set_float32_matmul_precision(before)

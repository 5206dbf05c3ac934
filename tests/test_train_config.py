"""Every training setting is checked before any work, in a message naming it and its allowed range."""

import re

import pytest

from test_training import _cli, compose_config, tiny_overrides

BAD_VALUES = [
    ("seed=-1", "seed must be an integer in [0, 4294967295], got -1"),
    ("seed=4294967296", "seed must be an integer in [0, 4294967295], got 4294967296"),
    ("trainer.max_steps=0", "trainer.max_steps must be a positive integer, got 0"),
    ("trainer.batch_size=0", "trainer.batch_size must be a positive integer, got 0"),
    ("trainer.seq_len=-8", "trainer.seq_len must be a positive integer, got -8"),
    ("trainer.val_every_n_steps=0", "trainer.val_every_n_steps must be a positive integer, got 0"),
    ("trainer.val_batches=0", "trainer.val_batches must be a positive integer, got 0"),
    ("trainer.accumulate_grad_batches=0", "trainer.accumulate_grad_batches must be a positive integer, got 0"),
    ("trainer.log_every_n_steps=0", "trainer.log_every_n_steps must be a positive integer, got 0"),
    ("trainer.num_nodes=0", "trainer.num_nodes must be a positive integer, got 0"),
    ("trainer.checkpoint_every_n_steps=0",
     "trainer.checkpoint_every_n_steps must be a positive integer or null (null: at each validation), got 0"),
    ("trainer.num_workers=-1", "trainer.num_workers must be an integer >= 0, got -1"),
    ("trainer.peak_flops=0", "trainer.peak_flops must be positive (FLOP/s) or null (null: the known table), got 0.0"),
    ("trainer.devices=0", "trainer.devices must be a positive integer, -1 (every device), 'auto', or a list of "
                          "device indices, got 0"),
    ("trainer.devices=[]", "trainer.devices must be a positive integer, -1 (every device), 'auto', or a list of "
                           "device indices, got []"),
    ("trainer.devices=[0,0]", "trainer.devices must be .*, got [0, 0]"),
    ("trainer.devices=many", "trainer.devices must be .*, got 'many'"),
    ("trainer.accelerator=tpu", "unknown trainer.accelerator 'tpu'; allowed: auto, cpu, gpu, cuda, mps"),
    ("trainer.strategy=dpp", "unknown trainer.strategy 'dpp'; allowed: auto, ddp, "),
    ("trainer.precision=fp8", "unknown trainer.precision 'fp8'; allowed: auto, 32-true, bf16-mixed"),
    ("trainer.nonfinite_loss=ignore", "unknown trainer.nonfinite_loss 'ignore'; allowed: stop, skip"),
    ("trainer.float32_matmul_precision=low",
     "unknown trainer.float32_matmul_precision 'low'; allowed: auto, highest, high, medium"),
    ("optim.lr=0", "optim.lr must be positive, got 0.0"),
    ("optim.lr=nan", "optim.lr must be positive, got nan"),
    ("optim.lr=inf", "optim.lr must be positive, got inf"),
    ("optim.min_lr_ratio=1.5", "optim.min_lr_ratio must be in [0, 1], got 1.5"),
    ("optim.warmup_steps=-1", "optim.warmup_steps must be an integer >= 0, got -1"),
    ("optim.weight_decay=-0.1", "optim.weight_decay must be >= 0, got -0.1"),
    ("optim.beta1=1.0", "optim.beta1 must be in [0, 1), got 1.0"),
    ("optim.beta2=-0.5", "optim.beta2 must be in [0, 1), got -0.5"),
    ("optim.eps=0", "optim.eps must be positive, got 0.0"),
    ("optim.grad_clip=-1", "optim.grad_clip must be >= 0 (0: no clipping), got -1.0"),
    ("logger.name=neptune", "unknown logger.name 'neptune'; allowed: tensorboard, wandb, mlflow"),
    ("experiment_name=a/b", "experiment_name must be a non-empty name without '/', got 'a/b'"),
    ("results_dir=''", "results_dir must be a non-empty path, got ''"),
    ("resume=''", "resume must be null, 'auto' or the path of a .ckpt file, got ''"),
]


@pytest.mark.parametrize("override, message", BAD_VALUES, ids=[o for o, _ in BAD_VALUES])
def test_every_bad_setting_is_named_with_its_allowed_range(override, message):
    config = compose_config([override])
    with pytest.raises(ValueError, match=re.escape(message).replace(re.escape(".*"), ".*")):
        config.validate()


@pytest.mark.parametrize("overrides", [
    ["seed=0"], ["seed=4294967295"], ["optim.beta1=0", "optim.beta2=0.999"], ["optim.warmup_steps=0"],
    ["optim.grad_clip=0", "optim.weight_decay=0", "optim.min_lr_ratio=1"],
    ["trainer.devices=auto"], ["trainer.devices=-1"], ["trainer.devices=[0,1]"], ["trainer.devices=2"],
    ["trainer.checkpoint_every_n_steps=null", "trainer.peak_flops=null"],
    ["trainer.checkpoint_every_n_steps=5", "trainer.peak_flops=1e12", "trainer.num_workers=0"],
    ["trainer=ddp"], ["trainer=fsdp"], ["trainer=multinode"], ["trainer.accelerator=cuda"],
    ["trainer.float32_matmul_precision=highest"], ["trainer.float32_matmul_precision=medium"],
    ["logger=wandb"], ["logger=mlflow"], ["resume=auto"],
], ids=lambda o: " ".join(o))
def test_the_edges_of_every_range_are_accepted(overrides):
    compose_config(overrides).validate()


@pytest.mark.slow
def test_a_bad_seed_is_one_line_from_the_command_line(tmp_path, corpus):
    # It used to fail deep in numpy ("-1 is not in bounds ...") after the data was prepared.
    result = _cli([*tiny_overrides(tmp_path, corpus), "seed=-1"], cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == "error: seed must be an integer in [0, 4294967295], got -1"
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("devices, one", [(1, True), ("1", True), ([3], True), ("3,", True), ("0,1", False),
                                          (2, False), ("2", False), ("auto", False), (-1, False)])
def test_one_process_reads_lightnings_forms_of_devices(devices, one):
    from attnlab.training.config import TrainerSection

    assert TrainerSection(devices=devices).one_process() is one
    assert TrainerSection(devices=devices, num_nodes=2).one_process() is False

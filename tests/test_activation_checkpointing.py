"""trainer.activation_checkpointing: the same losses and gradients as keeping the activations,
less memory, and the plan counts it."""

import pytest
import torch
import torch.nn.functional as F

from attnlab.config import ModelConfig
from attnlab.model import build_model
from attnlab.plan import check_fits_device, estimate_peak_bytes
from attnlab.training.config import TrainerSection
from conftest import supported_config
from variants import available_variants


def loss_and_gradient(model, idx):
    model.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(idx[:, :-1]).flatten(0, 1), idx[:, 1:].flatten())
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("variant", available_variants())
def test_recomputing_the_blocks_gives_the_same_loss_and_gradients(variant):
    model = build_model(supported_config(variant))
    idx = torch.randint(0, 100, (2, 17))
    kept = loss_and_gradient(model, idx)
    model.activation_checkpointing = True
    recomputed = loss_and_gradient(model, idx)
    torch.testing.assert_close(recomputed[0], kept[0], rtol=0, atol=0)
    for a, b in zip(recomputed[1], kept[1]):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_generation_and_evaluation_do_not_recompute():
    model = build_model(supported_config("baseline"))
    model.activation_checkpointing = True
    model.eval()
    idx = torch.randint(0, 100, (1, 8))
    with torch.no_grad():
        caches = model.new_kv_caches(1)
        assert model(idx, caches).shape[1] == 8  # the KV-cache path runs as before
    assert len(model.attention_probs(idx)) == model.config.n_layer


def test_the_plan_counts_it_and_suggests_it_when_it_fits():
    config = ModelConfig.from_preset("tiny")
    full = estimate_peak_bytes(config, 256, 8, "bf16-mixed")
    recomputed = estimate_peak_bytes(config, 256, 8, "bf16-mixed", checkpointing=True)
    assert recomputed < full
    trainer = TrainerSection(batch_size=8, seq_len=256, precision="bf16-mixed")
    memory = (full + recomputed) // 2
    with pytest.raises(ValueError, match=r"trainer\.activation_checkpointing=true \(~"):
        check_fits_device(config, trainer, "fake-gpu", memory_bytes=memory)
    trainer.activation_checkpointing = True
    check_fits_device(config, trainer, "fake-gpu", memory_bytes=memory)  # on: it fits


@pytest.mark.slow  # two training runs
def test_a_run_with_activation_checkpointing_trains_to_the_same_losses(tmp_path, corpus):
    from attnlab.training.run import train
    from test_training import compose_config, tiny_overrides

    losses = {}
    for recompute in (False, True):
        cfg = compose_config([*tiny_overrides(tmp_path, corpus), f"experiment_name=ac{recompute}",
                              f"trainer.activation_checkpointing={recompute}"])
        summary = train(cfg).load_summary()
        losses[recompute] = (summary["final_train_loss"], summary["final_val_loss"])
    assert losses[True] == losses[False]

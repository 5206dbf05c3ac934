"""model.match_params: each variant at baseline's parameter count, or a clear refusal."""

import pandas as pd
import pytest
import torch
from torch import nn

from attnlab.analysis.tables import parameter_notes
from attnlab.config import ModelConfig
from attnlab.params import MATCH_TOLERANCE, baseline_twin, match_parameters, total_parameters, variant_at_preset
from conftest import tiny_config
from variants import available_variants, register, unregister
from variants.baseline import BaselineAttention


def _config(preset, variant):
    return variant_at_preset(preset, variant)[0]  # one-head presets: two heads where needed


@pytest.mark.parametrize("preset", ["tiny", "seed100m", "gqa100m"])
@pytest.mark.parametrize("variant", available_variants())
def test_every_variant_matches_baseline_within_the_tolerance(preset, variant):
    config = _config(preset, variant)
    matched = match_parameters(config)
    target = total_parameters(baseline_twin(config))
    assert abs(total_parameters(matched) - target) <= MATCH_TOLERANCE * target
    assert matched.matched_intermediate_size % 8 == 0
    # Nothing but the MLP width changes, and the twin is measured without it.
    assert matched.intermediate_size == config.intermediate_size
    assert baseline_twin(matched).mlp_hidden_size == config.intermediate_size


def test_a_variant_that_already_matches_keeps_its_width_and_a_large_one_shrinks_its_mlp():
    assert match_parameters(_config("tiny", "baseline")).mlp_hidden_size == 352
    qk_scale = match_parameters(_config("seed100m", "qk_scale"))
    assert qk_scale.mlp_hidden_size < 2400 and qk_scale.mlp_hidden_size % 64 == 0


def test_a_variant_too_large_for_the_mlp_is_refused_saying_how_close_it_gets():
    @register("throwaway_huge")
    class Huge(BaselineAttention):
        """Baseline plus a Linear larger than the whole MLP."""

        def __init__(self, config):
            super().__init__(config)
            self.extra = nn.Linear(config.n_embd, 40 * config.intermediate_size, bias=False)

    try:
        with pytest.raises(ValueError, match=r"model.match_params=true cannot match variant 'throwaway_huge' "
                                             r"to baseline's [\d,]+ parameters .* is [\d.]+% away \(allowed: 0.5%\)"):
            match_parameters(tiny_config("throwaway_huge"))
    finally:
        unregister("throwaway_huge")


def test_a_matched_model_builds_with_the_matched_width():
    from attnlab.model import build_model

    config = match_parameters(ModelConfig.from_preset("tiny", variant="gated_attn", vocab_size=100))
    model = build_model(config)
    assert model.blocks[0].mlp.fc_1.out_features == config.matched_intermediate_size
    target = total_parameters(baseline_twin(config))
    assert abs(sum(p.numel() for p in model.parameters()) - target) <= MATCH_TOLERANCE * target
    assert torch.isfinite(model(torch.randint(0, 100, (1, 8)))).all()
    with pytest.raises(ValueError, match="closest width .* away"):  # too small a model to match
        match_parameters(tiny_config("gated_attn"))


def test_unmatched_runs_that_differ_by_more_than_one_percent_carry_a_note():
    frame = pd.DataFrame({"variant": ["baseline", "qk_scale", "qk_norm"], "parameters": [1000, 1100, 1001],
                          "params_matched": [False, False, False]})
    (note,) = parameter_notes(frame)
    assert "qk_scale 1,100 (+10.0%)" in note and "qk_norm" not in note and "match_params=true" in note
    assert parameter_notes(frame.assign(params_matched=True)) == []


def test_a_matched_run_says_so_in_its_summary(tmp_path, corpus):
    from attnlab.training.run import train
    from test_training import compose_config, tiny_overrides

    run = train(compose_config([*tiny_overrides(tmp_path, corpus), "variant=qk_norm", "model.match_params=true"]))
    summary = run.load_summary()
    assert summary["params_matched"] is True and summary["mlp_hidden_size"] == 64
    assert summary["flops_per_token"] > 0
    unmatched = train(compose_config([*tiny_overrides(tmp_path, corpus), "variant=qk_norm", "seed=1"]))
    assert unmatched.load_summary()["params_matched"] is False


DEMO_VOCAB = 8000  # the bundled corpus's tokenizer


@pytest.fixture(scope="module")
def demo_config_and_zoo_baseline():
    """Composed and built once: every variant's case compares with the same two."""
    from test_training import compose_config

    baseline = compose_config(["experiment=zoo", "variant=baseline"])
    return compose_config(["experiment=demo"]), baseline.model.build(baseline.variant, DEMO_VOCAB)


@pytest.mark.parametrize("variant", available_variants())
def test_the_zoo_experiment_runs_every_variant_matched_with_the_demos_settings(variant, demo_config_and_zoo_baseline):
    from test_training import compose_config

    demo, baseline = demo_config_and_zoo_baseline
    zoo = compose_config(["experiment=zoo", f"variant={variant}"])
    zoo.validate()
    assert (zoo.experiment_name, zoo.model.preset, zoo.model.n_head, zoo.model.match_params) == ("zoo", "tiny", 2, True)
    assert (zoo.data, zoo.trainer, zoo.optim) == (demo.data, demo.trainer, demo.optim)
    model = zoo.model.build(zoo.variant, DEMO_VOCAB)
    assert total_parameters(baseline) == 2_851_968 and baseline.mlp_hidden_size == 352
    assert abs(total_parameters(model) - 2_851_968) <= MATCH_TOLERANCE * 2_851_968
    assert model.mlp_hidden_size == {"gated_attn": 304, "qk_scale": 272}.get(variant, 352)


def test_the_zoo_sweep_is_every_variant_times_three_seeds_and_says_how_long_it_takes():
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    from attnlab.training.estimate import TimeEstimate, count_jobs
    from test_training import CONFIGS

    zoo = OmegaConf.load(CONFIGS / "experiment" / "zoo.yaml").hydra
    config = OmegaConf.create({"hydra": {"sweeper": {"_target_": "hydra._internal.core_plugins.basic_sweeper."
                                                                   "BasicSweeper", **zoo.sweeper},
                                         "overrides": {"task": ["experiment=zoo"]}}})
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):  # the variant group, for glob(*)
        assert count_jobs(config) == 3 * len(available_variants())
    estimate = zoo.callbacks.estimate
    assert estimate._target_ == "attnlab.training.estimate.TimeEstimate"
    assert TimeEstimate(estimate.experiment, estimate.seconds_per_run).message(42) == "zoo: 42 runs x ~80 s ≈ 56.0 min"

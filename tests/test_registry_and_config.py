"""The registry is the only way to a variant; configs reject bad values with clear errors."""

import pytest
import torch
from torch import nn

from attnlab.config import PRESETS, ModelConfig
from attnlab.model import build_model
from conftest import tiny_config
from variants import available_variants, get_variant, register, unregister
from variants.baseline import BaselineAttention


def test_unknown_variant_names_the_value_and_every_registered_variant():
    with pytest.raises(ValueError) as err:
        get_variant("sepqkv")
    message = str(err.value)
    assert "'sepqkv'" in message
    for name in available_variants():
        assert name in message
    with pytest.raises(ValueError, match="unknown attention variant 'nope'"):
        build_model(tiny_config("nope"))


def test_a_variant_defined_in_one_place_trains_without_touching_the_model():
    @register("throwaway_temperature")
    class LearnedTemperature(BaselineAttention):
        """Baseline with a learned logit temperature."""

        def __init__(self, config):
            super().__init__(config)
            self.log_temperature = nn.Parameter(torch.zeros(()))

        def project_qkv(self, x):
            return self.qkv(x) * self.log_temperature.exp()

    try:
        assert "throwaway_temperature" in available_variants()
        model = build_model(tiny_config("throwaway_temperature"))
        idx = torch.randint(0, 100, (2, 8))
        loss = nn.functional.cross_entropy(model(idx).flatten(0, 1), idx.flatten())
        loss.backward()
        assert model.blocks[0].attn.log_temperature.grad is not None
    finally:
        unregister("throwaway_temperature")
    assert "throwaway_temperature" not in available_variants()


def test_an_option_the_attention_description_refuses_names_the_variant():
    """A variant that leaves its checks to AttentionSpec's (no __post_init__ of its own)."""
    from dataclasses import dataclass

    from attnlab.attention import AttentionSpec

    @register("throwaway_capped")
    class Capped(BaselineAttention):
        """Baseline with soft-capped logits."""

        @dataclass(frozen=True)
        class Options:
            cap: float = 30.0

        @classmethod
        def attention_spec(cls, config):
            return AttentionSpec(softcap=cls.options(config).cap)

    try:
        with pytest.raises(ValueError, match=r"variant 'throwaway_capped': softcap must be positive, got -1.0; "
                                             r"options: \{'cap': -1.0\}"):
            build_model(tiny_config("throwaway_capped", variant_options={"cap": -1.0}))
    finally:
        unregister("throwaway_capped")


def test_a_variant_with_its_own_attend_must_say_which_kernels_run_it():
    # Unsaid, the plan would count a hand-written softmax as a fused kernel's: no maps, too little memory.
    with pytest.raises(TypeError, match=r"OwnSoftmax \(variant 'throwaway_own'\) overrides attend\(\) without "
                                        r"declaring kernels: set kernels = \(\"explicit\",\) on the class"):
        @register("throwaway_own")
        class OwnSoftmax(BaselineAttention):
            def attend(self, q, k, v, terms, q_offset, need_weights):
                weights = torch.softmax(q @ k.transpose(-2, -1), dim=-1)
                return weights @ v, None
    assert "throwaway_own" not in available_variants()


def test_a_block_defined_without_register_is_named():
    import types

    from variants.registry import unregistered_blocks

    module = types.ModuleType("variants.forgot")
    exec("from variants.baseline import BaselineAttention\n"
         "class ForgotAttention(BaselineAttention):\n    pass\n"
         "class _SharedBase(BaselineAttention):\n    pass\n", vars(module))
    assert [block.__name__ for block in unregistered_blocks(module)] == ["ForgotAttention"]
    import variants.baseline
    assert unregistered_blocks(variants.baseline) == []  # registered; and imported classes are not its own


def test_registering_a_name_twice_is_an_error():
    with pytest.raises(ValueError, match="already registered"):
        register("baseline")(type("Other", (BaselineAttention,), {}))


def test_register_rejects_non_blocks():
    with pytest.raises(TypeError):
        register("not_a_block")(int)


@pytest.mark.parametrize("overrides, message", [
    (dict(n_embd=30, n_head=4, n_query_groups=4), "n_embd=30 is not divisible by model.n_head=4"),
    (dict(n_head=4, n_query_groups=3), "not divisible by model.n_query_groups=3.*1, 2, 4"),
    (dict(n_layer=0), "n_layer must be a positive integer, got 0"),
    (dict(block_size=-5), "block_size must be a positive integer"),
    (dict(vocab_size=2.5), "vocab_size must be a positive integer"),
    (dict(rotary_percentage=1.5), r"rotary_percentage must be in \[0, 1\]"),
    (dict(rotary_percentage=0.01), "rotates no channel"),
    (dict(attn_kernel="flash9"), "unknown attention kernel 'flash9' .*available: auto, sdpa, flex, explicit"),
])
def test_invalid_configs_fail_with_the_bad_value(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**overrides)


def test_unknown_preset_and_unknown_setting():
    with pytest.raises(ValueError, match="unknown model preset 'huge'; available: ") as err:
        ModelConfig.from_preset("huge")
    assert all(name in str(err.value) for name in PRESETS)
    with pytest.raises(ValueError, match=r"unknown model setting\(s\) \['n_layers'\]"):
        ModelConfig.from_preset("tiny", n_layers=3)


def test_derived_fields():
    config = ModelConfig.from_preset("seed100m")
    assert (config.head_size, config.n_query_groups, config.padded_vocab_size) == (620, 1, 35_008)
    partial = tiny_config(rotary_percentage=0.25)  # head_size 8 -> 2 rotated channels
    assert partial.rope_n_elem == 2


def test_a_variants_model_wide_settings_are_applied_when_the_model_is_built():
    requested = tiny_config("gelu_bias")
    assert requested.bias is False  # the config is what was asked for ...
    model = build_model(requested)
    assert model.config.bias is True  # ... the model is what the variant declares
    assert model.blocks[0].mlp.fc_1.bias is not None
    assert build_model(tiny_config("sep_qkv")).config.bias is False
    # Resolving is idempotent, so a saved (resolved) config rebuilds the same model.
    assert build_model(model.config).config == model.config


def test_rotary_percentage_zero_turns_rope_off_for_any_variant():
    config = tiny_config(rotary_percentage=0.0)
    assert config.rope_n_elem == 0
    model = build_model(config).eval()
    idx = torch.randint(0, 100, (1, 8))
    with torch.no_grad():
        assert torch.isfinite(model(idx)).all()


def test_partial_rotary_leaves_the_rest_of_the_head_unrotated():
    model = build_model(tiny_config(rotary_percentage=0.5)).eval()
    idx = torch.randint(0, 100, (1, 8))
    with torch.no_grad():
        assert model(idx).shape == (1, 8, 128)


def test_sequence_longer_than_block_size_is_rejected():
    model = build_model(tiny_config())
    with pytest.raises(ValueError, match="33 tokens exceeds the model's block_size=32"):
        model(torch.zeros(1, 33, dtype=torch.long))

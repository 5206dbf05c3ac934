"""Decoding: KV cache equals recomputation, fixed seeds reproduce, padded ids never appear."""

import pytest
import torch

from attnlab.generate import SamplingConfig, check_fits_context, generate, process_logits
from attnlab.model import build_model
from conftest import tiny_config
from variants import available_variants

VOCAB = 90  # the "tokenizer" vocabulary; tiny_config pads the model's 100 rows to 128


def _model(variant: str = "baseline"):
    return build_model(tiny_config(variant), seed=0).eval()


@pytest.mark.parametrize("variant", available_variants())
def test_kv_cache_greedy_equals_recomputing_the_whole_sequence(variant):
    model = _model(variant)
    prompt = [1, 5, 17, 42, 7]
    cached = generate(model, prompt, VOCAB, SamplingConfig(max_new_tokens=10, greedy=True))
    uncached = generate(model, prompt, VOCAB, SamplingConfig(max_new_tokens=10, greedy=True, use_kv_cache=False))
    assert cached == uncached and len(cached) == 10


def test_sampling_is_reproducible_for_a_fixed_seed():
    model = _model()
    cfg = SamplingConfig(max_new_tokens=16, temperature=1.5, top_k=0, top_p=None, seed=3)
    first = generate(model, [1, 5, 9], VOCAB, cfg)
    torch.rand(10)  # the global RNG must not matter
    assert generate(model, [1, 5, 9], VOCAB, cfg) == first
    others = {tuple(generate(model, [1, 5, 9], VOCAB, SamplingConfig(**{**vars(cfg), "seed": s})))
              for s in range(4, 8)}
    assert len(others | {tuple(first)}) > 1


def test_padded_vocabulary_ids_are_never_generated():
    model = _model()
    with torch.no_grad():  # make the padding rows the most likely tokens
        model.lm_head.weight[VOCAB:] = model.lm_head.weight[:1] * 0 + 5.0
    for cfg in (SamplingConfig(max_new_tokens=12, greedy=True),
                SamplingConfig(max_new_tokens=12, temperature=5.0, top_k=0, top_p=None)):
        assert max(generate(model, [1, 2, 3], VOCAB, cfg)) < VOCAB


def test_generation_stops_at_eos():
    model = _model()
    first = generate(model, [1, 2, 3], VOCAB, SamplingConfig(max_new_tokens=10, greedy=True))
    stopped = generate(model, [1, 2, 3], VOCAB, SamplingConfig(max_new_tokens=10, greedy=True), eos_id=first[2])
    assert stopped == first[:first.index(first[2]) + 1]


def test_repetition_penalty_is_ctrl_style():
    logits = torch.tensor([2.0, -2.0, 1.0, 0.5])
    out = process_logits(logits, torch.tensor([0, 1]), 4, SamplingConfig(greedy=True, repetition_penalty=2.0))
    assert out.tolist() == [1.0, -4.0, 1.0, 0.5]  # seen: positive halved, negative doubled
    assert process_logits(logits, torch.tensor([0, 1]), 3, SamplingConfig(greedy=True, repetition_penalty=1.0)
                          ).tolist() == [2.0, -2.0, 1.0, float("-inf")]


def test_top_k_and_top_p_keep_the_expected_tokens():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    history = torch.tensor([], dtype=torch.long)

    def kept(**kw):
        return torch.isfinite(process_logits(logits, history, 4, SamplingConfig(
            temperature=1.0, repetition_penalty=1.0, **kw))).tolist()

    assert kept(top_k=2, top_p=None) == [True, True, False, False]
    assert kept(top_k=0, top_p=0.8) == [True, True, False, False]  # 0.5 + 0.3 reaches 0.8
    assert kept(top_k=0, top_p=0.81) == [True, True, True, False]
    assert kept(top_k=0, top_p=0.1) == [True, False, False, False]  # the top token always stays


def test_prompt_longer_than_the_context_is_refused_with_the_limit():
    model = _model()  # block_size 32
    with pytest.raises(ValueError, match=r"prompt is 40 tokens, longer than the model's context allows "
                                         r"\(block_size=32\); shorten it to at most 31 tokens"):
        generate(model, [5] * 40, VOCAB, SamplingConfig(max_new_tokens=4))
    with pytest.raises(ValueError, match=r"allowed: max_new_tokens <= 2"):
        generate(model, [5] * 30, VOCAB, SamplingConfig(max_new_tokens=4))
    check_fits_context(32, 0, 32)  # attention maps of a full-context prompt are fine
    with pytest.raises(ValueError, match=r"max_new_tokens=48 leaves no room for a prompt in the model's context "
                                         r"block_size=32; allowed: max_new_tokens <= 31"):
        generate(model, [5] * 40, VOCAB, SamplingConfig(max_new_tokens=48))


@pytest.mark.parametrize("settings, message", [
    ({"temperature": 0}, "sampling.temperature must be > 0 .a small one samples almost greedily., got 0"),
    ({"top_p": 1.5}, r"top_p must be in \(0, 1\]"),
    ({"top_k": -1}, "top_k must be >= 0"),
    ({"repetition_penalty": 0.9}, r"repetition_penalty must be >= 1.0 \(1.0: off\), got 0.9"),
    ({"max_new_tokens": 0}, "max_new_tokens must be positive, got 0"),
])
def test_bad_sampling_settings_name_the_value(settings, message):
    with pytest.raises(ValueError, match=message):
        SamplingConfig(**settings)

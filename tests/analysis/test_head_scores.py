"""Head scores on hand-made weight tensors with known answers, the probe, and every variant's weights."""

import math

import numpy as np
import pytest
import torch

from attnlab.analysis.head_scores import (SCORES, SUMMARIES, entropy, head_scores, lookback_distance, model_head_scores,
                                          normalised, probe_segment_len, query_scores, repeated_random_tokens,
                                          summarize_heads)
from attnlab.analysis.heatmaps import (MAX_COLUMNS, difference_figure, difference_maps, save_difference_heatmaps,
                                       variant_grid_figure)
from attnlab.analysis.maps import AttentionMaps, head_statistics
from attnlab.model import build_model
from conftest import supported_config
from variants import available_variants, get_variant

L = 5  # segment length of the hand-made probes: [<s>] + 5 + 5 tokens
T = 1 + 2 * L


def one_hot_rows(targets: dict[int, int], size: int = T) -> torch.Tensor:
    """(T, T) weights with row t all on key targets[t] (rows not named: on the query itself)."""
    w = torch.zeros(size, size)
    for t in range(size):
        w[t, targets.get(t, t)] = 1.0
    return w


def uniform_rows(size: int = T) -> torch.Tensor:
    w = torch.tril(torch.ones(size, size))
    return w / w.sum(-1, keepdim=True)


def test_a_perfect_induction_head_scores_one_and_a_previous_token_head_zero():
    induction = one_hot_rows({t: t - L + 1 for t in range(1 + L, T)})
    previous = one_hot_rows({t: t - 1 for t in range(1, T)})
    assert float(query_scores(induction, L)["induction"]) == 1.0
    assert float(query_scores(previous, L)["induction"]) == 0.0
    assert float(query_scores(previous, L)["prev_token"]) == 1.0
    assert float(query_scores(induction, L)["prev_token"]) == 0.0


def test_prev_token_starts_at_query_2_and_sink_is_the_weight_on_key_0():
    previous = one_hot_rows({t: t - 1 for t in range(1, T)})
    # query 1's previous key is key 0: it counts for sink (1 of T - 1 queries), not for prev_token
    assert float(query_scores(previous)["sink"]) == pytest.approx(1 / (T - 1))
    sink = one_hot_rows({t: 0 for t in range(T)})
    scores = query_scores(sink)
    assert float(scores["sink"]) == 1.0 and float(scores["prev_token"]) == 0.0
    assert float(scores["distance"]) == pytest.approx(np.mean(range(1, T)))  # look-back t from query t
    assert float(scores["entropy"]) == 0.0
    assert math.isnan(float(scores["induction"]))  # no segment length: no induction score


def test_a_uniform_row_has_entropy_log_of_its_visible_keys_and_distance_half_its_position():
    w = uniform_rows()
    t = torch.arange(T, dtype=torch.float64)
    assert torch.allclose(entropy(w), torch.log(t + 1))
    assert torch.allclose(lookback_distance(w), t / 2)
    scores = query_scores(w, L)
    assert float(scores["entropy_norm"]) == pytest.approx(1.0)
    assert float(scores["entropy"]) == pytest.approx(float(torch.log(t[1:] + 1).mean()))
    assert float(scores["sink"]) == pytest.approx(float((1 / (t[1:] + 1)).mean()))
    assert float(scores["row_mass"]) == pytest.approx(1.0) and float(scores["abs_mass"]) == pytest.approx(1.0)


@pytest.mark.parametrize("scale", [0.3, 2.5], ids=["sink-like rows < 1", "sigmoid-like rows > 1"])
def test_unnormalised_rows_keep_their_distribution_scores_and_report_their_mass(scale):
    w = uniform_rows() * scale
    plain, scaled = query_scores(uniform_rows(), L), query_scores(w, L)
    for name in ("entropy", "entropy_norm", "distance"):  # of |w| / sum |w|: the same distribution
        assert float(scaled[name]) == pytest.approx(float(plain[name]))
    for name in ("induction", "prev_token", "sink", "row_mass"):  # the weights as returned
        assert float(scaled[name]) == pytest.approx(scale * float(plain[name]))


def test_signed_rows_use_the_absolute_mass_for_entropy_and_report_both_masses():
    # A diff_attn-like row at query 1: map1 - lambda * map2 = [0.6, -0.2] (lambda = 0.4 ... sums to 0.4)
    w = torch.zeros(2, 2)
    w[0, 0] = 1.0
    w[1] = torch.tensor([0.6, -0.2])
    assert torch.allclose(normalised(w)[1], torch.tensor([0.75, 0.25], dtype=torch.float64))
    scores = query_scores(w)
    assert float(scores["entropy"]) == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    assert float(scores["distance"]) == pytest.approx(0.75)  # 0.75 of the mass one token back
    assert float(scores["row_mass"]) == pytest.approx(0.4) and float(scores["abs_mass"]) == pytest.approx(0.8)
    assert float(scores["sink"]) == pytest.approx(0.6)
    stats = head_statistics(w.numpy(), ["<s>", "a"])  # the prompt statistics use the same definitions
    assert stats["entropy"] == pytest.approx(float(scores["entropy"]))
    assert stats["distance"] == pytest.approx(0.75)


def test_head_scores_average_batch_and_queries_per_head():
    induction = one_hot_rows({t: t - L + 1 for t in range(1 + L, T)})
    w = torch.stack([torch.stack([induction, uniform_rows()]), torch.stack([induction, induction])])  # (2, 2, T, T)
    scores = head_scores(w, L)
    assert set(scores) == set(SCORES) and all(v.shape == (2,) for v in scores.values())
    uniform_induction = float(query_scores(uniform_rows(), L)["induction"])
    assert scores["induction"].tolist() == pytest.approx([1.0, (uniform_induction + 1.0) / 2])
    summary = summarize_heads([scores, scores])
    assert set(summary) == set(SUMMARIES)
    assert summary["induction_max"] == 1.0
    assert summary["induction_mean"] == pytest.approx((1.0 + (uniform_induction + 1.0) / 2) / 2)


def test_scores_are_computed_on_the_device_of_the_weights():
    # The training callback scores on the GPU; "meta" fails on any CPU tensor mixed in, as CUDA would.
    scores = head_scores(torch.rand(2, 3, T, T, device="meta"), L)
    assert all(v.device.type == "meta" and v.shape == (3,) for v in scores.values())


@pytest.mark.parametrize("shape, segment_len, message", [
    ((3, T), None, r"must be \(\.\.\., T, T\)"),
    ((T, T), 1, "segment_len must be >= 2"),
    ((T, T), L + 1, "does not fit T=11"),
])
def test_bad_shapes_and_segments_are_refused(shape, segment_len, message):
    with pytest.raises(ValueError, match=message):
        query_scores(torch.zeros(shape), segment_len)


def test_the_probe_repeats_distinct_non_special_tokens_after_bos_without_touching_the_global_rng():
    state = torch.get_rng_state()
    tokens = repeated_random_tokens(3, 8, vocab_size=40, seed=5)
    assert torch.equal(torch.get_rng_state(), state)
    assert tokens.shape == (3, 17) and (tokens[:, 0] == 1).all()
    first, second = tokens[:, 1:9], tokens[:, 9:]
    assert torch.equal(first, second)
    assert all(len(set(row.tolist())) == 8 for row in first)  # distinct: "first occurrence" is unambiguous
    assert ((first >= 4) & (first < 40)).all()  # no <unk> <s> </s> <pad>, nothing beyond the vocabulary
    assert torch.equal(tokens, repeated_random_tokens(3, 8, vocab_size=40, seed=5))
    assert not torch.equal(tokens, repeated_random_tokens(3, 8, vocab_size=40, seed=6))
    assert repeated_random_tokens(1, 3, 40, bos_id=None).shape == (1, 6)


def test_the_probe_segment_is_shortened_to_fit_the_context_and_the_vocabulary():
    assert probe_segment_len(32, block_size=256, vocab_size=1000) == 32
    assert probe_segment_len(32, block_size=64, vocab_size=1000) == 31  # <s> + 2 x 31 = 63 <= 64
    assert probe_segment_len(32, block_size=256, vocab_size=10) == 6  # 10 ids, 4 of them special
    with pytest.raises(ValueError, match="no induction probe fits"):
        probe_segment_len(32, block_size=4, vocab_size=1000)


@pytest.mark.parametrize("variant", available_variants())
def test_every_variant_gives_finite_scores_per_analysis_head(variant):
    config = supported_config(variant)
    model = build_model(config).eval()
    layers = model_head_scores(model, repeated_random_tokens(2, 8, config.vocab_size), 8)
    heads = config.n_head // 2 if variant == "diff_attn" else config.n_head
    assert len(layers) == config.n_layer
    for scores in layers:
        assert all(v.shape == (heads,) and torch.isfinite(v).all() for v in scores.values())
        assert ((scores["entropy_norm"] >= 0) & (scores["entropy_norm"] <= 1 + 1e-6)).all()
        if get_variant(variant).weights_are_distributions:
            assert torch.allclose(scores["row_mass"], torch.ones(heads, dtype=torch.float64), atol=1e-5)


def _maps(variant: str, probs: list[np.ndarray], ids=(1, 7, 8)) -> AttentionMaps:
    return AttentionMaps(variant, 0, "p", list(ids), ["<s>", "a", "b"][:len(ids)], probs)


def test_difference_maps_compare_head_by_head_or_the_head_means_when_the_counts_differ():
    ref = _maps("baseline", [np.stack([uniform_rows(3).numpy()] * 2)])
    same = _maps("qk_norm", [np.stack([one_hot_rows({}, 3).numpy(), uniform_rows(3).numpy()])])
    diffs, head_mean = difference_maps(same, ref, 0)
    assert not head_mean and len(diffs) == 2
    assert np.allclose(diffs[0], one_hot_rows({}, 3).numpy() - uniform_rows(3).numpy()) and np.allclose(diffs[1], 0)
    fewer = _maps("diff_attn", [one_hot_rows({}, 3).numpy()[None]])  # 1 differential head vs 2
    diffs, head_mean = difference_maps(fewer, ref, 0)
    assert head_mean and len(diffs) == 1
    assert np.allclose(diffs[0], one_hot_rows({}, 3).numpy() - uniform_rows(3).numpy())
    with pytest.raises(ValueError, match="tokenise the prompt differently"):
        difference_maps(_maps("x", same.probs, ids=(1, 9, 8)), ref, 0)


def test_no_difference_maps_without_the_reference_or_another_variant(tmp_path):
    only = _maps("sep_qkv", [uniform_rows(3).numpy()[None]])
    paths, notes = save_difference_heatmaps([only], "baseline", tmp_path)
    assert paths == [] and notes == ["difference heatmaps: the reference variant 'baseline' has no attention "
                                     "maps (variants present: sep_qkv); none drawn"]
    paths, notes = save_difference_heatmaps([only], "sep_qkv", tmp_path)
    assert paths == [] and "no variant besides 'sep_qkv'" in notes[0]
    assert not list(tmp_path.iterdir())


def test_many_variants_wrap_onto_rows_of_at_most_max_columns_with_one_panel_per_head():
    n_variants = MAX_COLUMNS + 2
    maps = [_maps(f"v{i}", [np.stack([uniform_rows(3).numpy()] * 2)]) for i in range(n_variants)]
    fig = variant_grid_figure(maps, 0)
    drawn = [ax for ax in fig.axes if ax.get_visible() and ax.get_title()]
    assert len(drawn) == 2 * n_variants  # one panel per (variant, head), none lost to the wrap
    assert {ax.get_title() for ax in drawn} == {f"v{i} head {h}" for i in range(n_variants) for h in (0, 1)}
    columns = {round(ax.get_position().x0, 3) for ax in drawn}
    assert len(columns) == MAX_COLUMNS
    bars = {ax.get_ylabel() for ax in fig.axes if ax.get_visible() and not ax.get_title()}
    assert bars == {"attention probability"}
    signed = _maps("signed", [np.stack([uniform_rows(3).numpy() - 0.5] * 2)])
    fig = variant_grid_figure([*maps, signed], 0)  # a panel on the -1..1 scale gets its own bar
    bars = {ax.get_ylabel() for ax in fig.axes if ax.get_visible() and not ax.get_title()}
    assert bars == {"attention probability", "signed weight (diverging scale)"}
    fig = difference_figure(maps, maps[0], 0)
    drawn = [ax for ax in fig.axes if ax.get_visible() and ax.get_title()]
    assert len(drawn) == 2 * (n_variants - 1)
    assert len({round(ax.get_position().x0, 3) for ax in drawn}) == MAX_COLUMNS

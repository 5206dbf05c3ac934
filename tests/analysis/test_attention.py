"""Heatmap probabilities, the statistics on known matrices, token labels and the CJK font."""

import warnings

import numpy as np
import pytest
from fontTools.ttLib import TTFont
from matplotlib import font_manager

from attnlab.analysis.heatmaps import heatmap_figure, save_difference_heatmaps, save_heatmaps
from attnlab.analysis.maps import (AttentionMaps, attention_maps, attention_statistics, head_statistics,
                                   summarize_statistics, token_labels)
from attnlab.analysis.pipeline import load_experiment, load_run, representative_runs
from attnlab.analysis.style import FONT_FAMILY, drawable

from .conftest import EXPERIMENT, PROMPTS, VARIANTS


@pytest.fixture(scope="module")
def maps(runs_dir):
    result = []
    for run in representative_runs(load_experiment(runs_dir, EXPERIMENT)):
        model, tokenizer = load_run(run)
        result.append(attention_maps(model, tokenizer, PROMPTS[0], run.variant, run.seed))
    return result


def test_heatmap_probabilities_are_causal_rows_that_sum_to_one(maps):
    assert [m.variant for m in maps] == list(VARIANTS)
    for m in maps:
        assert m.pieces[0] == "<s>" and m.n_layer == 2
        for probs in m.probs:  # (H, T, T)
            T = len(m.token_ids)
            assert probs.shape[1:] == (T, T)
            np.testing.assert_allclose(probs.sum(axis=-1), 1.0, atol=1e-5)
            assert (probs[:, np.triu_indices(T, k=1)[0], np.triu_indices(T, k=1)[1]] == 0).all()


def test_statistics_on_known_attention_patterns():
    T = 5
    pieces = ["<s>", "▁a", "、", "▁b", "."]
    identity = head_statistics(np.eye(T), pieces)
    assert identity["diagonal"] == 1.0 and identity["distance"] == 0.0 and identity["entropy"] == 0.0
    # query 1 sees no punctuation yet, so it is left out: queries 2, 3, 4 put 1, 0, 1 on it
    assert identity["sink"] == 0.0 and identity["punctuation"] == pytest.approx(2 / 3)
    uniform = np.tril(np.ones((T, T))) / np.arange(1, T + 1)[:, None]
    stats = head_statistics(uniform, pieces)
    queries = np.arange(1, T)
    assert stats["sink"] == pytest.approx(np.mean(1 / (queries + 1)))
    assert stats["entropy"] == pytest.approx(np.mean(np.log(queries + 1)))
    assert stats["entropy_norm"] == pytest.approx(1.0)
    assert stats["distance"] == pytest.approx(np.mean(queries / 2))
    sink = np.zeros((T, T))
    sink[:, 0] = 1.0
    assert head_statistics(sink, pieces)["sink"] == 1.0
    assert np.isnan(head_statistics(sink, ["<s>", "a", "b", "c", "d"])["punctuation"])


def test_statistics_table_has_a_row_per_variant_layer_and_head(maps):
    per_map = attention_statistics(maps)
    assert len(per_map) == sum(m.n_layer * m.n_head for m in maps)
    summary = summarize_statistics(per_map)
    assert list(summary.columns[:5]) == ["variant", "layer", "head", "seeds", "prompts"]
    assert summary[["entropy", "sink", "diagonal", "punctuation"]].notna().all().all()


def test_byte_pieces_are_labelled_by_the_character_they_spell():
    pieces = ["<s>", "▁the", "<0xE7>", "<0x94>", "<0xBA>", "、", "<0xE7>"]
    assert token_labels(pieces) == ["<s>", "␣the", "町¹", "町²", "町³", "、", "<0xE7>"]


def test_heatmap_font_is_a_cjk_font_with_the_glyphs_we_draw():
    path = font_manager.findfont(FONT_FAMILY, fallback_to_default=False)
    cmap = TTFont(path, fontNumber=0).getBestCmap()
    assert all(ord(ch) in cmap for ch in "彼女が子供の頃に住んでいた、海の見える小さな町は。␣¹²³"), path


def test_characters_the_font_lacks_are_written_as_code_points():
    assert drawable("海の𠮷野家😀 a、。") == "海のU+20BB7野家U+1F600 a、。"


@pytest.mark.slow  # renders and saves figures
def test_heatmaps_render_japanese_without_missing_glyphs(tmp_path):
    T = 4
    probs = np.tril(np.ones((1, T, T))) / np.arange(1, T + 1)[:, None]
    # 𠮷 and the emoji are outside the font, in the prompt of the titles; 𩸽 as a piece of the vocabulary
    m = AttentionMaps("baseline", 0, "町は、𠮷😀", [1, 2, 3, 4], ["<s>", "町", "𩸽", "、"], [probs])
    other = AttentionMaps("qk_scale", 0, m.prompt, m.token_ids, m.pieces, [np.tril(probs[:, :, ::-1])])
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="Glyph")  # "Glyph 30010 ... missing from font(s)"
        heatmap_figure(m, 0, 0).savefig(tmp_path / "one.png")
        paths = save_heatmaps([m, m], tmp_path / "maps", layers=[0])
        save_difference_heatmaps([m, other], "baseline", tmp_path / "diff", layers=[0])
    assert {p.name for p in paths} == {"layer0_head0.png", "layer0_head0.pdf", "grid_layer0.png", "grid_layer0.pdf"}
    with pytest.raises(ValueError, match=r"heatmap layers \[3\] do not exist; allowed: 0..0"):
        save_heatmaps([m], tmp_path / "bad", layers=[3])

"""Figure layout with many variants: every variant keeps a legend entry that does not cover the data."""

import pandas as pd

from attnlab.analysis.figures import LEGEND_INSIDE_MAX, loss_curve_figure


def _curves(variants: list[str]) -> pd.DataFrame:
    return pd.DataFrame([{"variant": v, "seed": seed, "step": step, "tokens": 1024 * step,
                          "val_loss": 7.0 - 0.01 * step - 0.1 * k + 0.01 * seed}
                         for k, v in enumerate(variants) for seed in (0, 1) for step in (50, 100, 150)])


def test_a_few_variants_keep_the_legend_inside_the_axes():
    variants = [f"v{i}" for i in range(LEGEND_INSIDE_MAX)]
    fig = loss_curve_figure(_curves(variants), variants)
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [f"{v} (n=2)" for v in variants]
    assert not fig.legends


def test_many_variants_move_the_legend_outside_and_widen_the_figure():
    variants = [f"v{i}" for i in range(LEGEND_INSIDE_MAX + 8)]
    narrow = loss_curve_figure(_curves(variants[:2]), variants[:2]).get_size_inches()[0]
    fig = loss_curve_figure(_curves(variants), variants)
    (ax,) = fig.axes
    assert ax.get_legend() is None
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == [f"{v} (n=2)" for v in variants]
    assert fig.get_size_inches()[0] > narrow


def test_a_figure_saved_twice_is_the_same_file_byte_for_byte(tmp_path, monkeypatch):
    from attnlab.analysis.style import save_figure

    variants = ["baseline", "qk_scale"]
    saved = []
    for when in ("0", "3600"):  # an hour apart: a PDF's creation date would differ
        monkeypatch.setenv("SOURCE_DATE_EPOCH", when)
        saved.append(save_figure(loss_curve_figure(_curves(variants), variants), tmp_path / when, "curves"))
    assert [p.name for p in saved[0]] == ["curves.png", "curves.pdf"]
    for a, b in zip(*saved):
        assert a.read_bytes() == b.read_bytes(), a.name

"""One figure style for every plot: a Japanese-capable font, fixed variant colours, PNG + PDF.

Token strings and prompts are Japanese, and matplotlib's default DejaVu Sans has
no kanji (they render as empty boxes), so every figure uses IPAexGothic, which
``matplotlib-fontja`` bundles and registers; it also covers Latin text.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: evaluate.py and the tests run without a display

import matplotlib.pyplot as plt  # noqa: E402
import matplotlib_fontja  # noqa: E402,F401  (registers IPAexGothic with matplotlib)
import seaborn as sns  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

# Font subsetting for every PDF logs a dozen INFO lines; Hydra's logging would show them all.
logging.getLogger("fontTools").setLevel(logging.WARNING)

FONT_FAMILY = "IPAexGothic"
FORMATS = ("png", "pdf")
PALETTE = ("#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C")
RC = {
    "font.family": FONT_FAMILY,
    "pdf.fonttype": 42,  # embed TrueType so the PDF text stays text (and searchable)
    "figure.dpi": 110,
    "savefig.dpi": 200,
    "savefig.bbox": "tight",
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "legend.frameon": False,
    "font.size": 10,
}


def use_style() -> None:
    """Apply the project style globally; importing this module already does (as matplotlib-fontja
    does for its font), so figures look the same from evaluate.py, notebooks and tests."""
    plt.rcParams.update(RC)


use_style()


@functools.cache
def _font_codepoints() -> frozenset[int]:
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    return frozenset(FT2Font(font_manager.findfont(FONT_FAMILY, fallback_to_default=False)).get_charmap())


def drawable(text: str) -> str:
    """``text`` with each character the figure font has no glyph for (a rare kanji such as 𠮷,
    an emoji) written as its code point, U+20BB7, instead of drawn as an empty box."""
    codepoints = _font_codepoints()
    return "".join(c if ord(c) in codepoints or c in "\n\t" else f"U+{ord(c):04X}" for c in text)


def variant_colors(variants: Sequence[str]) -> dict[str, str]:
    """The same colour for a variant in every figure of one evaluation (order: variant_order);
    more variants than the palette holds get evenly spaced hues, so no two share a colour."""
    colors = PALETTE if len(variants) <= len(PALETTE) else sns.color_palette("husl", len(variants)).as_hex()
    return {v: colors[i] for i, v in enumerate(variants)}


def save_figure(fig: Figure, out_dir: Path, name: str, formats: Sequence[str] = FORMATS) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.{fmt}" for fmt in formats]
    for path in paths:
        # No creation date in a PDF (a PNG has none): the same figure is the same file, so a
        # committed figure can be checked byte for byte against its command's output.
        fig.savefig(path, **({"metadata": {"CreationDate": None}} if path.suffix == ".pdf" else {}))
    plt.close(fig)
    return paths

"""``python -m attnlab.variants``: derived from the registry and the variants' declarations."""

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from attnlab.attention import AttentionSpec
from attnlab.variants import format_listing, list_variants
from variants import available_variants, register, unregister
from variants.baseline import BaselineAttention


def test_every_registered_variant_is_listed_with_its_declarations():
    listing = list_variants("tiny")
    assert [row["variant"] for row in listing.rows] == available_variants()
    rows = {row["variant"]: row for row in listing.rows}
    assert rows["baseline"]["extra params"] == "+0" and rows["baseline"]["trains on CUDA"] == "sdpa"
    assert rows["sigmoid_attn"]["trains on CPU"] == "explicit"
    assert rows["gated_attn"]["options (default)"] == "granularity ('elementwise')"
    assert rows["gated_attn"]["matched MLP width"] == "304"
    assert rows["talking_heads"]["head layouts"].endswith("not 1 head")


def test_a_new_variant_appears_without_editing_the_listing():
    @register("throwaway_listed")
    class Listed(BaselineAttention):
        """A one-line summary the listing shows."""

        paper = "Nobody 2099, A Paper"

        @dataclass(frozen=True)
        class Options:
            cap: float = 7.0

        @classmethod
        def attention_spec(cls, config):
            return AttentionSpec(softcap=cls.options(config).cap)

    try:
        row = {r["variant"]: r for r in list_variants("tiny").rows}["throwaway_listed"]
        assert (row["summary"], row["paper"], row["options (default)"]) == \
            ("A one-line summary the listing shows.", "Nobody 2099, A Paper", "cap (7.0)")
        assert (row["trains on CPU"], row["trains on CUDA"]) == ("explicit", "flex")
    finally:
        unregister("throwaway_listed")


@pytest.mark.slow
def test_the_listing_runs_from_the_command_line():
    result = subprocess.run([sys.executable, "-m", "attnlab.variants", "--preset", "seed100m"],
                            cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout == format_listing(list_variants("seed100m"), "seed100m") + "\n"

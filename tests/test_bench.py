"""``bench/throughput.py`` runs end to end and writes the JSON that scripts read.

Not a timing test: a tiny model for one step per contestant, checking the report's
structure and the bad-input messages, so the benchmark cannot rot between the
sessions that run it for real.
"""

import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import throughput  # noqa: E402

from variants import available_variants  # noqa: E402

QUICK = ["--preset", "tiny", "--seq-len", "32", "--batch-size", "2", "--steps", "1", "--rounds", "2",
         "--warmup", "1", "--device", "cpu"]


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.mark.slow
def test_throughput_writes_the_ratios_scripts_read(tmp_path, capsys):
    pytest.importorskip("transformers")
    out = tmp_path / "bench.json"
    report = throughput.main([*QUICK, "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    # Structure only: relations between timings (e.g. the matmul-only ceiling above the
    # measured throughput) hold on an idle machine but not on a loaded test runner.
    assert _positive(report["baseline_vs_hf"])
    assert set(report["step_time_vs_baseline"]) == set(available_variants())
    assert all(_positive(r) for r in report["step_time_vs_baseline"].values())
    assert report["step_time_vs_baseline"]["baseline"] == 1.0
    case = report["cases"][0]
    # A variant that needs several heads runs with two, next to a baseline of that shape.
    multi_head = [v for v in available_variants()
                  if case["results"][v]["compared_with"] != "baseline"]
    assert set(case["results"]) == {*available_variants(), throughput.HF_NAME,
                                    *(case["results"][v]["compared_with"] for v in multi_head)}
    for row in case["results"].values():
        assert _positive(row["tokens_per_s"]) and _positive(row["step_s"])
    for key in ("gemm_s_per_step", "gemm_ceiling_tokens_per_s", "baseline_of_gemm_ceiling"):
        assert _positive(case[key]), key
    printed = capsys.readouterr().out
    assert "| baseline |" in printed and "baseline tokens/s / hf_llama tokens/s" in printed
    assert "matmul-only ceiling" in printed


def test_flex_rows_are_refused_on_cpu_with_the_reason():
    with pytest.raises(SystemExit, match="--flex qk_scale: FlexAttention has no CPU backward"):
        throughput.main([*QUICK, "--no-hf", "--flex", "qk_scale"])

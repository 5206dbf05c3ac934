"""``bench/throughput.py`` runs end to end and writes the JSON that scripts read.

Not a timing test: a tiny model for one step per contestant, checking the report's
structure and the bad-input messages, so the benchmark cannot rot between the
sessions that run it for real.
"""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import throughput  # noqa: E402

from variants import available_variants  # noqa: E402

QUICK = ["--preset", "tiny", "--seq-len", "32", "--batch-size", "2", "--steps", "1", "--rounds", "2",
         "--warmup", "1", "--device", "cpu"]


def test_throughput_writes_the_ratios_scripts_read(tmp_path, capsys):
    pytest.importorskip("transformers")
    out = tmp_path / "bench.json"
    report = throughput.main([*QUICK, "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    assert report["baseline_vs_hf"] > 0
    assert set(report["step_time_vs_baseline"]) == set(available_variants())
    assert report["step_time_vs_baseline"]["baseline"] == 1.0
    case = report["cases"][0]
    assert set(case["results"]) == {*available_variants(), throughput.HF_NAME}
    # The step's matmuls timed alone cannot take longer than the whole step.
    assert case["gemm_ceiling_tokens_per_s"] > case["results"]["baseline"]["tokens_per_s"]
    assert 0 < case["baseline_of_gemm_ceiling"] < 1
    printed = capsys.readouterr().out
    assert "| baseline |" in printed and "baseline tokens/s / hf_llama tokens/s" in printed
    assert "matmul-only ceiling" in printed


def test_flex_rows_are_refused_on_cpu_with_the_reason():
    with pytest.raises(SystemExit, match="--flex qk_scale: FlexAttention has no CPU backward"):
        throughput.main([*QUICK, "--no-hf", "--flex", "qk_scale"])

"""One tiny finished experiment per test session, shared by every analysis test.

2 variants x 2 seeds x 4 steps: enough for intervals, tests and heatmaps, and
trained once (a few seconds per run on a CPU core).
"""

from pathlib import Path

import pytest

from test_training import REPO, compose_config, tiny_overrides, write_demo_sample  # noqa: F401 (REPO re-exported)

EXPERIMENT = "tiny"
VARIANTS = ("baseline", "qk_scale")
SEEDS = (0, 1)
# Short prompts: the tiny tokenizer spells kanji in bytes, and block_size is 64 here.
PROMPTS = ["海の見える町は、", "the sea."]


@pytest.fixture(scope="session")
def runs_dir(tmp_path_factory) -> Path:
    from attnlab.training.run import train

    root = tmp_path_factory.mktemp("analysis")
    corpus = write_demo_sample(root / "docs.jsonl")
    for variant in VARIANTS:
        for seed in SEEDS:
            train(compose_config([f"variant={variant}", f"seed={seed}", f"experiment_name={EXPERIMENT}",
                                  *tiny_overrides(root, corpus), "model.block_size=64"]))
    return root / "runs"

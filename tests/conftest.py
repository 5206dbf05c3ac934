import pytest
import torch

from attnlab.config import ModelConfig


def tiny_config(variant: str = "baseline", **overrides) -> ModelConfig:
    """A model small enough that every variant runs forward+backward in milliseconds."""
    settings = dict(vocab_size=100, block_size=32, n_layer=2, n_head=4, n_query_groups=2,
                    n_embd=32, intermediate_size=64)
    settings.update(overrides)
    return ModelConfig(variant=variant, **settings)


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """A small real ja/en corpus file (see ``test_training.write_demo_sample``)."""
    from test_training import write_demo_sample

    return write_demo_sample(tmp_path_factory.mktemp("corpus") / "docs.jsonl")

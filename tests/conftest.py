import gc
import os
import warnings

import pytest
import torch

from attnlab.config import ModelConfig

# One intra-op thread: the tests' tensors are tiny, so a second thread adds only synchronisation,
# which on a busy 2-core machine costs several times the work (tests/test_variants.py: 28 s -> 7 s).
# Child processes inherit the variable, so a run in a subprocess computes as one in this process.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

# Hydra's compose and OmegaConf's merges allocate containers by the hundred thousand, so at the default
# threshold (700) the collector ran about 6,000 times per fast-tier worker, 5-6 s of each worker's time
# (gc.callbacks); at 50,000 it runs about 70 times, about 2 s. Memory is not the limit of these tests.
gc.set_threshold(50_000, 20, 100)


def pytest_collection_finish(session):
    """What collection imported (torch, Lightning, Hydra) is never garbage: out of every later collection."""
    gc.collect()
    gc.freeze()


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


# Slow tests in modules that do not mark them themselves: module file -> test functions (None:
# all of them). `make test-fast` (-m "not slow") leaves them to `make test`; a name that is no
# longer in its module is reported, so a rename cannot quietly move a slow test into the fast tier.
SLOW_TESTS = {
    "test_training.py": {
        # train.py in a fresh interpreter (torch and Hydra imports) per run
        "test_cli_sweep_of_every_variant_by_2_seeds_then_evaluation_over_all_of_them",
        "test_sweep_through_the_submitit_launcher_and_the_slurm_example_config",
        "test_cli_rejects_unknown_options_naming_them",
        "test_cli_reports_bad_values_in_one_line",
        "test_a_multi_process_run_under_the_joblib_launcher_is_refused_before_anything_is_written",
        # in-process training runs (the fast tier still trains: tests/analysis/conftest.py's runs)
        "test_every_variant_trains_and_leaves_a_complete_run_directory",
        "test_same_seed_gives_identical_losses_and_data_order",
        "test_existing_run_directory_is_never_overwritten_silently",
        "test_trainer_peak_flops_gives_the_logged_mfu",
        "test_float32_matmul_precision_is_resolved_set_and_recorded",
        "test_bf16_mixed_clips_gradients_with_the_fused_optimizer",
        "test_16_mixed_with_a_gradient_scaler_takes_the_unfused_optimizer_and_clips_unscaled",
        "test_validation_throughput_counts_forward_flops_only",
    },
    "test_export.py": None,  # trains a run per exportable variant, loads each into transformers
    "test_loggers.py": None,  # training runs, one per logger
    "test_resume.py": None,  # training runs, interrupted and resumed
    "test_evaluate.py": None,  # evaluation end to end: tables, figures, heatmaps and samples of trained runs
    "test_head_scores_training.py": None,  # training runs with the head-score probe
    "test_match_params.py": {"test_a_matched_run_says_so_in_its_summary"},  # a training run
}


@pytest.hookimpl(tryfirst=True)  # before -m deselects
def pytest_collection_modifyitems(config, items):
    modules = {}
    for item in items:
        # A generic test's kernel="flex" case: FlexAttention on CPU runs unfused, up to a second a
        # case. tests/test_flex_kernel.py still checks flex for every variant in the fast tier.
        if getattr(item, "callspec", None) is not None and item.callspec.params.get("kernel") == "flex":
            item.add_marker(pytest.mark.slow)
        if item.path.name not in SLOW_TESTS:
            continue
        names = SLOW_TESTS[item.path.name]
        if names is None or getattr(item, "originalname", item.name) in names:
            item.add_marker(pytest.mark.slow)
        if names and getattr(item, "module", None) is not None:
            modules[item.path.name] = item.module
    for file, module in modules.items():
        missing = sorted(n for n in SLOW_TESTS[file] if not hasattr(module, n))
        if missing:
            warnings.warn(pytest.PytestConfigWarning(f"conftest.SLOW_TESTS names tests not in {file}: {missing}"),
                          stacklevel=1)


def supported_config(variant: str, kernel: str | None = None, **overrides) -> ModelConfig:
    """``tiny_config``, or a skip naming the variant's own reason when it declares that it
    cannot use this model shape or kernel (so generic tests need no per-variant code)."""
    from variants import get_variant
    from variants.registry import supported_kernels

    config = tiny_config(variant, **overrides)
    block = get_variant(variant)
    reason = block.unsupported(config)
    if reason is not None:
        pytest.skip(reason)
    if kernel is not None:
        if kernel != "auto" and kernel not in supported_kernels(block, config):
            pytest.skip(f"{variant} cannot run on the {kernel} kernel")
        config = tiny_config(variant, attn_kernel=kernel, **overrides)
    return config

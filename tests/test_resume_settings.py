"""What a resumed run may change, checked against its config.yaml without training (rundir.py)."""

import copy
import dataclasses
import functools
import re

import pytest
import yaml

from attnlab.runs import RunDir
from attnlab.training.rundir import check_resume_keeps_settings
from test_training import compose_config

DATA = {"tokenizer_sha256": "ab12", "vocab_size": 1000, "train_tokens": 5000, "val_tokens": 500}


def settings(overrides: list[str], data: dict = DATA) -> dict:
    """The resolved configuration as config.yaml holds it (the model left out: the checkpoint's)."""
    return {**copy.deepcopy(_composed(tuple(overrides))), "resolved_data": dict(data)}


@functools.cache
def _composed(overrides: tuple[str, ...]) -> dict:
    return yaml.safe_load(yaml.safe_dump(dataclasses.asdict(compose_config(list(overrides)))))


@pytest.fixture
def run(tmp_path):
    run = RunDir(tmp_path / "runs" / "e" / "baseline" / "seed0")
    run.path.mkdir(parents=True)
    return run


def written(run: RunDir, config: dict) -> None:
    run.config.write_text(yaml.safe_dump(config), encoding="utf-8")


@pytest.mark.parametrize("change, named", [
    (["optim.lr=0.01"], "optim.lr=0.002 (now 0.01)"),
    (["trainer.batch_size=4"], "trainer.batch_size=8 (now 4)"),
    (["trainer.devices=2"], "trainer.devices=1 (now 2)"),  # the global batch
    (["data.val_fraction=0.1"], "data.val_fraction=0.05 (now 0.1)"),
])
def test_a_setting_that_decides_the_run_is_refused_by_name(run, change, named):
    written(run, settings([]))
    with pytest.raises(ValueError, match=rf"resume: .*seed0 was trained with {re.escape(named)}; a resumed run keeps"):
        check_resume_keeps_settings(run, settings(change))


def test_where_and_how_long_it_runs_may_change(run):
    written(run, settings([]))
    check_resume_keeps_settings(run, settings(["trainer.max_steps=900", "trainer.precision=32-true",
                                               "model.attn_kernel=explicit", "logger=wandb", "data.num_threads=1",
                                               "trainer.val_every_n_steps=7", "trainer.compile=false"]))


def test_data_that_now_tokenises_differently_is_refused(run):
    written(run, settings([]))
    with pytest.raises(ValueError, match=r"resolved_data.tokenizer_sha256='ab12' \(now 'cd34'\), "
                                         r"resolved_data.train_tokens=5000 \(now 5100\)"):
        check_resume_keeps_settings(run, settings([], {**DATA, "tokenizer_sha256": "cd34", "train_tokens": 5100}))


def test_a_corpus_moved_to_another_path_resumes_where_the_run_recorded_its_data(run):
    corpus = ["data=text", "data.paths=[/scratch/a/corpus.jsonl]"]
    moved = ["data=text", "data.paths=[/scratch/b/corpus.jsonl]"]
    written(run, settings(corpus))
    check_resume_keeps_settings(run, settings(moved))  # the same tokenizer and token counts
    old = settings(corpus)
    del old["resolved_data"]  # a run written before it recorded them: the path is all there is
    written(run, old)
    with pytest.raises(ValueError, match=r"data.paths=\['/scratch/a/corpus.jsonl'\] \(now \['/scratch/b/"):
        check_resume_keeps_settings(run, settings(moved))


def test_a_config_written_before_a_setting_existed_counts_it_at_its_default(run):
    old = settings([])
    del old["data"]["encoding"], old["resolved_data"]  # neither existed when the run was written
    written(run, old)
    check_resume_keeps_settings(run, settings([]))
    with pytest.raises(ValueError, match=r"data.encoding='utf-8' \(now 'cp932'\)"):
        check_resume_keeps_settings(run, settings(["data=text", "data.paths=[x.txt]", "data.encoding=cp932"]))


def test_under_a_budget_the_budget_is_kept_not_the_warmup_it_sets(run):
    budget = ["budget.tokens_per_param=20"]
    saved = settings(budget)
    written(run, saved)
    derived = copy.deepcopy(settings(budget))
    derived["optim"]["warmup_steps"] = 17  # what apply_budget sets from the budget
    check_resume_keeps_settings(run, derived)
    with pytest.raises(ValueError, match=r"budget.tokens_per_param=20.0 \(now 40.0\)"):
        check_resume_keeps_settings(run, settings(["budget.tokens_per_param=40"]))


def test_a_checkpoint_resumed_into_a_new_directory_is_not_compared(run):
    check_resume_keeps_settings(run, settings(["optim.lr=0.01"]))  # no config.yaml: a deliberate fork


def test_resume_with_overwrite_continues_and_says_so(tmp_path, caplog):
    from attnlab.training.rundir import claim_run_dir

    cfg = compose_config([f"results_dir={tmp_path / 'runs'}", "resume=auto", "overwrite=true"])
    run = RunDir.for_run(cfg.results_dir, cfg.experiment_name, "baseline", 0)
    run.path.mkdir(parents=True)
    (run.path / "notes.txt").write_text("kept")
    with caplog.at_level("WARNING", logger="attnlab.training.rundir"):
        assert claim_run_dir(run, cfg) is None  # no checkpoint yet: from step 0, in place
    assert "resume=auto with overwrite=true: the run directory" in caplog.text
    assert "is continued, not replaced" in caplog.text
    assert (run.path / "notes.txt").read_text() == "kept" and not list(run.path.parent.glob("*.replaced-*"))

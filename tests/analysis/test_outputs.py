"""An evaluation's output directory: a whole evaluation removes the files the previous one listed and
did not write again, once its own are written; an update of some outputs keeps them; files no
evaluation wrote (a user's, Hydra's logs) always stay."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from attnlab.analysis.outputs import RECORD, output_of, prepare_outputs


def evaluate_into(out: Path, files: dict[str, str], outputs: tuple[str, ...] | None = None,
                  fail: bool = False) -> list[str]:
    """What an evaluator does: note the directory, write its files, then its record listing them;
    ``outputs``: the pipeline's outputs it makes (None: every one)."""
    before = prepare_outputs(out)
    for name, text in files.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(text)
    if fail:
        raise RuntimeError("the evaluation failed after writing some files")
    written = before.finish() if outputs is None else before.finish(lambda name: output_of(name) in outputs)
    (out / RECORD).write_text(json.dumps({"outputs": written}))
    return written


def test_a_whole_evaluation_replaces_the_previous_ones_files_and_keeps_the_users(tmp_path):
    out = tmp_path / "results"
    (out / "hydra").mkdir(parents=True)
    (out / "notes.md").write_text("mine")
    first = evaluate_into(out, {"tables/a.csv": "1", "tables/b.csv": "1", "figures/x.png": "1",
                                "hydra/evaluate.log": "Hydra's, written meanwhile"})
    assert first == ["figures/x.png", "tables/a.csv", "tables/b.csv"]  # only what an evaluation owns
    (out / "tables" / "mine.csv").write_text("mine too")
    # b is not made this time (a variant left out): it goes; a is rewritten with the same bytes.
    second = evaluate_into(out, {"tables/a.csv": "1", "figures/x.png": "2"})
    assert second == ["figures/x.png", "tables/a.csv"]
    assert not (out / "tables" / "b.csv").exists()
    assert (out / "notes.md").read_text() == "mine" and (out / "tables" / "mine.csv").read_text() == "mine too"
    assert (out / "hydra" / "evaluate.log").is_file()


def test_a_folder_emptied_of_the_previous_evaluations_files_goes_with_them(tmp_path):
    out = tmp_path / "results"
    evaluate_into(out, {"heatmaps/old_variant/layer0_head0.png": "1", "heatmaps/kept/layer0_head0.png": "1",
                        "heatmaps/mine/layer0_head0.png": "1"})
    (out / "heatmaps" / "mine" / "notes.txt").write_text("mine")
    evaluate_into(out, {"heatmaps/kept/layer0_head0.png": "2"})
    assert sorted(p.name for p in (out / "heatmaps").iterdir()) == ["kept", "mine"]  # old_variant/ is gone
    assert (out / "heatmaps" / "mine" / "notes.txt").read_text() == "mine"
    evaluate_into(out, {"tables/a.csv": "1"})  # no heatmaps at all: the folder is kept for the user's file
    assert [p.name for p in (out / "heatmaps").iterdir()] == ["mine"]


def test_a_failed_evaluation_removes_nothing(tmp_path):
    out = tmp_path / "results"
    out.mkdir()
    evaluate_into(out, {"tables/a.csv": "1", "tables/b.csv": "1"})
    with pytest.raises(RuntimeError):
        evaluate_into(out, {"tables/a.csv": "2"}, fail=True)
    assert (out / "tables" / "b.csv").read_text() == "1"
    assert json.loads((out / RECORD).read_text())["outputs"] == ["tables/a.csv", "tables/b.csv"]
    assert evaluate_into(out, {"tables/a.csv": "3"}) == ["tables/a.csv"]  # the next one finishes the job
    assert not (out / "tables" / "b.csv").exists()


def test_an_evaluation_of_some_outputs_replaces_their_files_and_keeps_the_others(tmp_path):
    out = tmp_path / "results"
    out.mkdir()
    evaluate_into(out, {"tables/a.csv": "1", "samples.md": "1", "heatmaps/baseline/layer0_head0.png": "1",
                        "heatmaps/baseline/layer1_head0.png": "1", "figures/head_scores.png": "1"})
    # outputs=[heatmaps] heatmap_layers=[0]: layer 1's heatmap goes; tables, samples, head scores stay.
    updated = evaluate_into(out, {"heatmaps/baseline/layer0_head0.png": "2"}, outputs=("heatmaps",))
    assert updated == ["figures/head_scores.png", "heatmaps/baseline/layer0_head0.png", "samples.md",
                       "tables/a.csv"]
    assert not (out / "heatmaps" / "baseline" / "layer1_head0.png").exists()
    assert (out / "tables" / "a.csv").read_text() == "1"
    # The next whole evaluation still knows the kept files as an evaluation's.
    assert evaluate_into(out, {"samples.md": "3"}) == ["samples.md"]
    assert not (out / "tables" / "a.csv").exists() and not (out / "figures" / "head_scores.png").exists()


@pytest.mark.parametrize("name, output", [
    ("tables/aggregate.md", "tables"), ("tables/attention_stats_per_run.csv", "attention_stats"),
    ("attention_stats.md", "attention_stats"), ("figures/final_val_loss.png", "figures"),
    ("figures/head_scores.pdf", "head_scores"), ("head_scores.csv", "head_scores"),
    ("figures/loss_by_position.png", "loss_by_position"), ("loss_by_position.csv", "loss_by_position"),
    ("samples.json", "samples"), ("heatmaps/diff_layer0.png", "heatmaps"),
    ("heatmaps/sep_qkv/layer1_head0.pdf", "heatmaps"),
])
def test_each_file_of_an_evaluation_belongs_to_the_output_that_writes_it(name, output):
    assert output_of(name) == output


def test_a_listed_path_that_is_not_an_evaluations_is_never_removed(tmp_path):
    out = tmp_path / "results"
    out.mkdir()
    outside, notes = tmp_path / "precious.txt", out / "notes.md"
    for path in (outside, notes):
        path.write_text("keep")
    up = (Path("..") / outside.name).as_posix()  # relative, but outside the directory
    (out / RECORD).write_text(json.dumps({"outputs": [up, str(outside), "notes.md", "tables/../notes.md"]}))
    assert evaluate_into(out, {"tables/a.csv": "1"}) == ["tables/a.csv"]
    assert outside.read_text() == "keep" and notes.read_text() == "keep"
    (out / "tables" / "b.csv").write_text("1")
    (out / RECORD).write_text("not json")  # not an evaluation's record: nothing listed, nothing removed
    evaluate_into(out, {"tables/a.csv": "2"})
    assert (out / "tables" / "b.csv").is_file()

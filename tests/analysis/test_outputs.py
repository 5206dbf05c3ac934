"""An evaluation's output directory: a whole evaluation removes the files the previous one listed,
an update of some outputs keeps them, and files no evaluation wrote always stay."""

from __future__ import annotations

import json
from pathlib import Path

from attnlab.analysis.outputs import RECORD, prepare_outputs


def evaluate_into(out, files: dict[str, str], replace: bool = True) -> list[str]:
    """What an evaluator does: prepare, write its files and its record listing them."""
    before = prepare_outputs(out, replace=replace)
    for name, text in files.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(text)
    written = before.written()
    (out / RECORD).write_text(json.dumps({"outputs": written}))
    return written


def test_a_whole_evaluation_replaces_the_previous_ones_files_and_keeps_the_users(tmp_path):
    out = tmp_path / "results"
    out.mkdir()
    (out / "notes.md").write_text("mine")
    first = evaluate_into(out, {"tables/a.csv": "1", "tables/b.csv": "1", "figures/x.png": "1"})
    assert first == ["figures/x.png", "tables/a.csv", "tables/b.csv"]
    # b is not made this time (a variant left out): it goes; a is rewritten with the same bytes.
    second = evaluate_into(out, {"tables/a.csv": "1", "figures/x.png": "2"})
    assert second == ["figures/x.png", "tables/a.csv"]
    assert not (out / "tables" / "b.csv").exists()
    assert (out / "notes.md").read_text() == "mine"


def test_an_update_of_some_outputs_keeps_the_others(tmp_path):
    out = tmp_path / "results"
    out.mkdir()
    evaluate_into(out, {"tables/a.csv": "1", "samples/s.md": "1"})
    updated = evaluate_into(out, {"samples/s.md": "2"}, replace=False)
    assert updated == ["samples/s.md", "tables/a.csv"]
    assert (out / "tables" / "a.csv").read_text() == "1"
    # The next whole evaluation still knows the kept file as an evaluation's.
    assert evaluate_into(out, {"samples/s.md": "3"}) == ["samples/s.md"]
    assert not (out / "tables" / "a.csv").exists()


def test_a_listed_path_outside_the_directory_is_never_removed(tmp_path):
    out = tmp_path / "results"
    out.mkdir()
    outside = tmp_path / "precious.txt"
    outside.write_text("keep")
    up = (Path("..") / outside.name).as_posix()  # relative, but outside the directory
    (out / RECORD).write_text(json.dumps({"outputs": [up, str(outside)]}))
    prepare_outputs(out)
    assert outside.read_text() == "keep"
    (out / RECORD).write_text("not json")  # not an evaluation's record: nothing is removed
    assert prepare_outputs(out).files == {RECORD: prepare_outputs(out).files[RECORD]}

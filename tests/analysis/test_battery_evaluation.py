"""``evaluate.py experiment=<battery>``: per-cell, per-task and overall accuracies, the uninformative-cell
rule, Holm, figures; and ``experiment=battery`` composes into the grid it says.

The run directories hold what training writes that the battery's evaluation reads (summary.json), with
known accuracies, so the answers are known exactly.
"""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from attnlab.analysis.battery import is_battery
from attnlab.analysis.config import EvaluateConfig
from attnlab.analysis.pipeline import evaluate
from attnlab.analysis.stats import holm

CHANCE = {"icr": 0.125, "compression": 0.0625}
SEED_OFFSET = {"baseline": {0: -0.01, 1: 0.01, 2: 0.0}, "gated_attn": {0: 0.0, 1: 0.0, 2: 0.03},
               "qk_norm": {0: 0.0, 1: 0.005, 2: -0.005}}


def write_run(runs_dir, task, size, variant, seed, acc, cell=None, vocab_size=16, chance=None, lr=2e-3) -> None:
    path = runs_dir / f"bat-{task}-{cell or f'n{size}'}" / variant / f"seed{seed}"
    path.mkdir(parents=True)
    (path / "summary.json").write_text(json.dumps({
        "variant": variant, "seed": seed, "final_val_acc": acc, "lr": lr, "max_steps": 1000,
        "data": {"source": task, "task": {"task": task, "vocab_size": vocab_size, "num_train_examples": size,
                                          "chance_acc": CHANCE[task] if chance is None else chance}}}))


def cell_accuracy(task, size, variant) -> float:
    if task == "icr":
        if size == 16:  # every variant at chance (<= 1.5 x 0.125): uninformative
            return 0.15
        if variant == "qk_norm":  # at chance in every informative cell
            return 0.13
        return {256: 0.5, 1024: 0.6, 4096: 0.7}[size] + (0.1 if variant == "gated_attn" else 0.0)
    if size == 256:  # every variant solved: uninformative
        return 1.0
    return {"baseline": 0.8, "gated_attn": 0.85, "qk_norm": 0.7}[variant]


def make_battery(runs_dir) -> None:
    grid = {"icr": (16, 256, 1024, 4096), "compression": (256, 1024)}
    for task, sizes in grid.items():
        for size in sizes:
            for variant, offsets in SEED_OFFSET.items():
                for seed, offset in offsets.items():
                    write_run(runs_dir, task, size, variant, seed, cell_accuracy(task, size, variant) + offset)


def test_the_battery_evaluation_averages_informative_cells_and_tests_against_the_reference(tmp_path):
    runs_dir = tmp_path / "runs"
    make_battery(runs_dir)
    assert is_battery(runs_dir, "bat") and not is_battery(runs_dir, "bat-icr-n256")
    out = evaluate(EvaluateConfig(experiment="bat", runs_dir=str(runs_dir), bootstrap_resamples=200))
    assert out == tmp_path / "bat"

    cells = pd.read_csv(out / "tables" / "cells.csv").drop_duplicates(["task", "cell"]).set_index(["task", "cell"])
    assert cells.loc[("icr", "n16"), "status"] == "at chance"
    assert cells.loc[("compression", "n256"), "status"] == "solved"
    assert (cells.drop([("icr", "n16"), ("compression", "n256")])["status"] == "informative").all()
    assert cells.loc[("icr", "n256"), "difficulty"] == "num_train_examples=256"  # the knob, from summary.json

    per_task = pd.read_csv(out / "tables" / "per_task.csv").set_index(["task", "variant"])
    # icr: the mean over n256, n1024, n4096 only (n16 left out); per seed, then over seeds.
    assert per_task.loc[("icr", "baseline"), "acc"] == pytest.approx(0.6)
    assert per_task.loc[("icr", "gated_attn"), "acc"] == pytest.approx(0.71)
    assert per_task.loc[("icr", "gated_attn"), "difference"] == pytest.approx(0.11)  # paired: 0.11, 0.09, 0.13
    assert per_task.loc[("icr", "gated_attn"), "cells"] == 3 and per_task.loc[("icr", "baseline"), "n"] == 3
    assert per_task.loc[("compression", "gated_attn"), "acc"] == pytest.approx(0.86)  # n1024 only
    assert per_task.loc[("compression", "gated_attn"), "difference"] == pytest.approx(0.06)
    assert per_task.loc[("icr", "qk_norm"), "note"] == "at chance in every informative cell"
    assert per_task["note"].drop(("icr", "qk_norm")).isna().all()
    # Holm over every (variant, task): 2 variants x 2 tasks.
    tested = per_task.dropna(subset=["p"])
    assert len(tested) == 4 and per_task.loc[[("icr", "baseline"), ("compression", "baseline")], "p_holm"].isna().all()
    assert list(tested["p_holm"]) == pytest.approx(holm(list(tested["p"])))
    assert (tested["p_holm"] >= tested["p"]).all()
    markdown = (out / "tables" / "per_task.md").read_text()
    assert "p (Holm)" in markdown and "icr: cell(s) n16 (at chance) uninformative, left out." in markdown
    assert "compression: cell(s) n256 (solved) uninformative, left out." in markdown

    overall = pd.read_csv(out / "tables" / "overall.csv").set_index("variant")
    assert overall.loc["baseline", "score"] == pytest.approx((0.6 + 0.8) / 2)
    assert overall.loc["gated_attn", "difference"] == pytest.approx((0.11 + 0.06) / 2)
    assert overall["tasks"].eq(2).all() and overall["p_holm"].notna().sum() == 2

    for figure in ("accuracy_heatmap", "accuracy_vs_difficulty"):
        for ext in ("png", "pdf"):
            assert (out / "figures" / f"{figure}.{ext}").stat().st_size > 0
    for table in ("cells", "per_task", "overall"):
        assert all((out / "tables" / f"{table}.{ext}").exists() for ext in ("csv", "md", "tex"))
    per_run = pd.read_csv(out / "tables" / "per_run.csv")
    assert len(per_run) == len(json.loads((out / "evaluation.json").read_text())["runs"])
    cells = pd.read_csv(out / "tables" / "cells.csv")
    means = per_run.groupby(["task", "cell", "variant"])["acc"].mean()
    assert cells.set_index(["task", "cell", "variant"])["acc"].to_dict() == pytest.approx(means.to_dict())
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert sorted(evaluation["uninformative_cells"]) == ["compression/n256 (solved)", "icr/n16 (at chance)"]
    assert evaluation["difficulty_keys"] == {"icr": ["num_train_examples"], "compression": ["num_train_examples"]}


def test_each_cell_is_held_to_its_own_chance(tmp_path):
    """A task whose cells differ in chance (more values to recall): a variant at 0.18 where chance is
    1/8 but 0.15 where it is 1/32 (4.8x chance) is not "at chance in every informative cell", and the
    task's chance is the mean of its cells', as its score is the mean of their accuracies."""
    runs_dir = tmp_path / "runs"
    accuracy = {("v16", "baseline"): 0.5, ("v64", "baseline"): 0.4, ("v16", "alibi"): 0.18, ("v64", "alibi"): 0.15}
    for (cell, variant), acc in accuracy.items():
        vocab = int(cell[1:])
        for seed in range(2):
            write_run(runs_dir, "icr", 256, variant, seed, acc + 0.01 * seed, cell=cell, vocab_size=vocab,
                      chance=2 / vocab)
    out = evaluate(EvaluateConfig(experiment="bat", runs_dir=str(runs_dir), bootstrap_resamples=50, ladder=None,
                                  ladder_result=None, outputs=["tables"]))
    per_task = pd.read_csv(out / "tables" / "per_task.csv").set_index(["task", "variant"])
    assert per_task.loc[("icr", "alibi"), "cells"] == 2
    assert pd.isna(per_task.loc[("icr", "alibi"), "note"])
    assert per_task.loc[("icr", "alibi"), "chance"] == pytest.approx((1 / 8 + 1 / 32) / 2)
    cells = pd.read_csv(out / "tables" / "cells.csv").drop_duplicates("cell").set_index("cell")
    assert cells["chance"].to_dict() == pytest.approx({"v16": 1 / 8, "v64": 1 / 32})
    # Read back, a run that recorded no lr (an older summary.json) is unknown, not a second rate.
    per_run = pd.read_csv(out / "tables" / "per_run.csv")
    per_run.loc[0, "lr"] = None
    per_run.to_csv(out / "tables" / "per_run.csv", index=False)
    again = evaluate(EvaluateConfig(battery_result=str(out), output_dir=str(tmp_path / "again"),
                                    bootstrap_resamples=50, ladder=None, ladder_result=None, outputs=["tables"]))
    assert json.loads((again / "evaluation.json").read_text())["notes"] == []


def test_outputs_without_figures_draws_none_and_keeps_the_previous_ones_but_not_the_outputs_asked_for(tmp_path):
    """``outputs=[tables, samples]`` on a battery: its figures are not drawn, and a previous evaluation's
    figures stay beside the new tables as part of this one, as for an experiment; the previous files
    of the outputs asked for go, those a battery cannot make (samples) too, as in a whole evaluation."""
    runs_dir = tmp_path / "runs"
    make_battery(runs_dir)
    out = tmp_path / "bat"
    (out / "figures").mkdir(parents=True)
    (out / "tables").mkdir()
    (out / "figures" / "accuracy_heatmap.png").write_bytes(b"the previous evaluation's figure")
    (out / "tables" / "vs_a_variant_left_out.md").write_text("a table the previous evaluation wrote")
    (out / "samples.md").write_text("samples of an experiment evaluated here before")
    (out / "evaluation.json").write_text(json.dumps(
        {"outputs": ["figures/accuracy_heatmap.png", "samples.md", "tables/vs_a_variant_left_out.md"]}))
    evaluate(EvaluateConfig(experiment="bat", runs_dir=str(runs_dir), bootstrap_resamples=50, ladder=None,
                            ladder_result=None, outputs=["tables", "samples"]))
    assert (out / "figures" / "accuracy_heatmap.png").read_bytes() == b"the previous evaluation's figure"
    assert sorted(p.name for p in (out / "figures").iterdir()) == ["accuracy_heatmap.png"]
    assert not (out / "tables" / "vs_a_variant_left_out.md").exists()  # the tables were redone
    assert not (out / "samples.md").exists()
    listed = json.loads((out / "evaluation.json").read_text())["outputs"]
    assert "figures/accuracy_heatmap.png" in listed and "tables/per_task.md" in listed and "samples.md" not in listed


def test_a_cell_whose_runs_were_trained_differently_is_named_in_a_warning(tmp_path, caplog):
    runs_dir = tmp_path / "runs"
    for variant in ("baseline", "gated_attn"):
        for seed in range(2):
            # A seed of baseline trained again at another learning rate, into the same cell.
            lr = 1e-5 if (variant, seed) == ("baseline", 1) else 2e-3
            write_run(runs_dir, "icr", 256, variant, seed, 0.5 + 0.01 * seed, lr=lr)
            write_run(runs_dir, "icr", 1024, variant, seed, 0.6 + 0.01 * seed)
    out = evaluate(EvaluateConfig(experiment="bat", runs_dir=str(runs_dir), bootstrap_resamples=50, ladder=None,
                                  ladder_result=None, outputs=["tables"]))
    warning = "WARNING: icr/n256: runs differ in lr (baseline: 0.002/1e-05, gated_attn: 0.002)."
    assert json.loads((out / "evaluation.json").read_text())["notes"] == [warning]
    assert warning in (out / "tables" / "per_task.md").read_text() and warning in caplog.text
    assert "n1024" not in caplog.text


def test_the_battery_experiment_composes_into_one_experiment_per_task_and_cell():
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    from attnlab.training.estimate import count_jobs
    from test_training import CONFIGS, compose_config

    base = OmegaConf.load(CONFIGS / "experiment" / "battery.yaml").hydra
    assert base.sweeper.params["battery"] == "glob(*)"  # every cell file in configs/battery
    cells = sorted(path.stem for path in (CONFIGS / "battery").glob("*.yaml"))
    tasks = {cell.split("-")[0] for cell in cells}
    assert tasks == {"icr", "fuzzy_icr", "noisy_icr", "selective_copy", "compression", "memorization"}
    for cell in cells:  # each cell chooses its task, names its experiment after itself, fits 32 tokens
        task = cell.split("-")[0]
        cfg = compose_config(["experiment=battery", f"battery={cell}"])
        cfg.validate()
        assert (cfg.experiment_name, cfg.data.source, cfg.model.preset, cfg.trainer.threads,
                cfg.trainer.progress_bar) == (f"battery-{cell}", task, "recall", 1, False)
    # A cell sets its knob and nothing else: icr-v64 differs from icr-v16 in the vocabulary only.
    v16, v64 = (compose_config(["experiment=battery", f"battery=icr-{v}"]) for v in ("v16", "v64"))
    assert (v16.data.icr.vocab_size, v64.data.icr.vocab_size) == (16, 64)
    assert OmegaConf.to_container(OmegaConf.structured(v16.trainer)) == \
        OmegaConf.to_container(OmegaConf.structured(v64.trainer))
    # sliding_window is local attention at these lengths (its default window would cover them).
    cfg = compose_config(["experiment=battery", "variant=sliding_window"])
    cfg.validate()
    assert cfg.variant.options["window"] == 8 < cfg.trainer.seq_len
    # forgetting starts from its authors' gate init, not from the discount a zero bias gives.
    cfg = compose_config(["experiment=battery", "variant=forgetting"])
    cfg.validate()
    assert cfg.variant.options["gate_bias_init"] == "range"
    config = OmegaConf.create({"hydra": {
        "sweeper": {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
                    "params": base.sweeper.params},
        "launcher": {"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", "n_jobs": 2},
        "overrides": {"task": ["experiment=battery"]}}})
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        assert count_jobs(config) == len(cells) * 9 * 3  # cells x variants x seeds
    assert len(cells) == 12
    assert base.callbacks.estimate.experiment == "battery"


@pytest.mark.slow  # four evaluations: a ladder's and three of a battery
def test_with_a_ladder_beside_it_the_battery_reports_the_rank_correlation(tmp_path):
    from . import test_ladder_evaluation as lad

    runs_dir = tmp_path / "runs"
    make_battery(runs_dir)
    lad.make_ladder(runs_dir)  # baseline and gated_attn (2x compute), ladder "lad"
    for rung, compute in lad.RUNGS.items():  # qk_norm: baseline with half the compute
        for seed, lr in ((100, 2e-3), (0, 2e-3), (1, 2e-3), (2, 2e-3)):
            lad.write_run(runs_dir, "qk_norm", rung, lr, seed, lad.E + lad.A * (0.5 * compute) ** -lad.ALPHA)
    out = evaluate(EvaluateConfig(experiment="bat", runs_dir=str(runs_dir), bootstrap_resamples=200, ladder="lad"))
    table = pd.read_csv(out / "tables" / "ladder_agreement.csv").set_index("variant")
    assert table["top_rung_multiplier"].to_dict() == pytest.approx({"baseline": 1.0, "gated_attn": 2.0,
                                                                    "qk_norm": 0.5}, rel=1e-2)
    # Battery overall: gated_attn > baseline > qk_norm, the ladder's order too.
    assert table["battery_rank"].to_dict() == {"gated_attn": 1, "baseline": 2, "qk_norm": 3}
    # Strict JSON: a NaN would be written as a bare NaN, which JSON does not have.
    agreement = json.loads((out / "evaluation.json").read_text(),
                           parse_constant=lambda name: pytest.fail(f"{name} in evaluation.json"))["ladder_agreement"]
    assert agreement["rho"] == pytest.approx(1.0)
    assert "Spearman's rho" in (out / "tables" / "ladder_agreement.md").read_text()
    # Each task on its own too: here both rank the variants as the ladder does.
    per_task = pd.read_csv(out / "tables" / "ladder_agreement_per_task.csv").set_index("score")
    assert per_task["rho"].to_dict() == pytest.approx({"overall": 1.0, "compression": 1.0, "icr": 1.0})
    assert [row["score"] for row in agreement["per_task"]] == ["overall", "compression", "icr"]
    # Without the ladder's runs, its evaluation directory (tables/per_run.csv + evaluation.json, as a
    # committed reference result has them) gives the same multipliers and rho.
    ladder_out = evaluate(EvaluateConfig(experiment="lad", runs_dir=str(runs_dir), bootstrap_resamples=200,
                                         output_dir=str(tmp_path / "lad_result")))
    for member in runs_dir.glob("lad-*"):
        shutil.rmtree(member)
    out = evaluate(EvaluateConfig(experiment="bat", runs_dir=str(runs_dir), bootstrap_resamples=200, ladder="lad",
                                  ladder_result=str(ladder_out), output_dir=str(tmp_path / "from_result")))
    from_result = pd.read_csv(out / "tables" / "ladder_agreement.csv").set_index("variant")
    pd.testing.assert_frame_equal(from_result.sort_index(), table.sort_index())
    again = json.loads((out / "evaluation.json").read_text())["ladder_agreement"]
    assert (again["rho"], again["rho_low"], again["rho_high"]) == \
        (agreement["rho"], agreement["rho_low"], agreement["rho_high"])
    assert again["ladder_source"] == f"the ladder result {ladder_out}"
    # Neither runs nor a result: the battery is evaluated alone, saying why there is no agreement. Into
    # the same directory, the previous evaluation's agreement tables go (they are not this one's); a
    # file no evaluation wrote stays.
    (out / "my_notes.md").write_text("mine")
    assert "tables/ladder_agreement.csv" in json.loads((out / "evaluation.json").read_text())["outputs"]
    out = evaluate(EvaluateConfig(experiment="bat", runs_dir=str(runs_dir), bootstrap_resamples=200,
                                  ladder="nope", ladder_result=None, output_dir=str(tmp_path / "from_result")))
    assert not list((out / "tables").glob("ladder_agreement*"))
    assert (out / "my_notes.md").read_text() == "mine" and (out / "tables" / "per_task.md").is_file()
    assert "my_notes.md" not in json.loads((out / "evaluation.json").read_text())["outputs"]
    assert "no ladder 'nope'" in json.loads((out / "evaluation.json").read_text())["ladder_agreement"]["reason"]
    # A directory that is not a ladder's evaluation: refused, naming the setting and what is missing.
    with pytest.raises(FileNotFoundError, match="ladder_result=.*per_run.csv"):
        evaluate(EvaluateConfig(experiment="bat", runs_dir=str(runs_dir), ladder="nope",
                                ladder_result=str(runs_dir), output_dir=str(tmp_path / "bad")))
    with pytest.raises(ValueError, match="ladder_result=.*names no ladder"):  # a battery's evaluation
        evaluate(EvaluateConfig(experiment="bat", runs_dir=str(runs_dir), ladder="nope",
                                ladder_result=str(tmp_path / "from_result"), output_dir=str(tmp_path / "bad")))


def test_a_ladder_named_but_not_found_is_not_silently_replaced_by_the_committed_one(tmp_path, caplog):
    """ladder=<a name> (or ladder_runs_dir=) with no such runs: the committed ladder result still
    stands in, as the table's source says, and a warning says that it does."""
    runs_dir = tmp_path / "runs"
    make_battery(runs_dir)
    with caplog.at_level("WARNING", logger="attnlab.analysis.battery"):
        out = evaluate(EvaluateConfig(experiment="bat", runs_dir=str(runs_dir), bootstrap_resamples=50, ladder="nosuch",
                                      outputs=["tables"]))
    assert f"no runs of ladder 'nosuch' under {runs_dir}: the battery is compared with the ladder result " \
           f"reference/ladder instead" in caplog.text
    source = json.loads((out / "evaluation.json").read_text())["ladder_agreement"].get("ladder_source")
    assert source == "the ladder result reference/ladder"


@pytest.mark.slow  # three evaluations: a ladder's and two of a battery
def test_a_battery_result_is_evaluated_again_without_its_runs(tmp_path):
    """``battery_result=<dir>``: the per-run accuracies a battery's evaluation wrote give the same
    tables and the same agreement with a ladder, with the runs gone; bad directories are refused
    naming the setting, and the result's own directory is never written over."""
    from . import test_ladder_evaluation as lad

    runs_dir = tmp_path / "runs"
    make_battery(runs_dir)
    # A cell named like a number, varying a second setting (two difficulty knobs for compression),
    # and a run never validated, whose note only the first evaluation can write.
    for variant, offsets in SEED_OFFSET.items():
        for seed, offset in offsets.items():
            write_run(runs_dir, "compression", 1024, variant, seed, 0.6 + offset, cell="016", vocab_size=32)
    write_run(runs_dir, "icr", 256, "baseline", 3, None)
    lad.make_ladder(runs_dir)
    for rung, compute in lad.RUNGS.items():  # a third variant, so that there is a rank correlation
        for seed in (100, 0, 1, 2):
            lad.write_run(runs_dir, "qk_norm", rung, 2e-3, seed, lad.E + lad.A * (0.5 * compute) ** -lad.ALPHA)
    ladder_out = evaluate(EvaluateConfig(experiment="lad", runs_dir=str(runs_dir), bootstrap_resamples=200,
                                         output_dir=str(tmp_path / "lad_result")))
    kw = dict(bootstrap_resamples=200, ladder=None, ladder_result=str(ladder_out))
    from_runs = evaluate(EvaluateConfig(experiment="bat", runs_dir=str(runs_dir), output_dir=str(tmp_path / "a"), **kw))
    shutil.rmtree(runs_dir)
    again = evaluate(EvaluateConfig(battery_result=str(from_runs), runs_dir=str(runs_dir),
                                    output_dir=str(tmp_path / "b"), **kw))
    written = sorted(path.name for path in (from_runs / "tables").iterdir())
    assert "ladder_agreement.md" in written and "per_task.md" in written
    for table in written:  # numbers and the notes under each table
        assert (again / "tables" / table).read_text() == (from_runs / "tables" / table).read_text(), table
    first, second = (json.loads((d / "evaluation.json").read_text()) for d in (from_runs, again))
    assert second["source"] == f"the battery result {from_runs}"
    assert first["difficulty_keys"]["compression"] == ["num_train_examples", "vocab_size"]
    assert "016" in (from_runs / "tables" / "cells.csv").read_text()
    assert any("1 run(s) without final_val_acc" in note for note in second["notes"])
    assert {k: v for k, v in first.items() if k != "source"} == {k: v for k, v in second.items() if k != "source"}
    # The result's own directory is never the output: named, or as the default <runs_dir>/../bat.
    with pytest.raises(ValueError, match="battery_result's own"):
        evaluate(EvaluateConfig(battery_result=str(from_runs), output_dir=str(from_runs), **kw))
    shutil.copytree(from_runs, tmp_path / "bat")
    with pytest.raises(ValueError, match="battery_result's own"):
        evaluate(EvaluateConfig(battery_result=str(tmp_path / "bat"), runs_dir=str(runs_dir), **kw))
    with pytest.raises(ValueError, match="experiment='other'.*battery 'bat'"):
        evaluate(EvaluateConfig(experiment="other", battery_result=str(from_runs), output_dir=str(tmp_path / "c"),
                                **kw))
    with pytest.raises(FileNotFoundError, match="battery_result=.*per_run.csv"):
        evaluate(EvaluateConfig(battery_result=str(tmp_path), output_dir=str(tmp_path / "d"), **kw))
    with pytest.raises(ValueError, match="battery_result=.*names no battery"):  # a ladder's evaluation
        evaluate(EvaluateConfig(battery_result=str(ladder_out), output_dir=str(tmp_path / "e"), **kw))
    (tmp_path / "f").mkdir()
    shutil.copytree(from_runs / "tables", tmp_path / "f" / "tables")
    shutil.copy(from_runs / "evaluation.json", tmp_path / "f")
    per_run = pd.read_csv(tmp_path / "f" / "tables" / "per_run.csv").drop(columns="acc")
    per_run.to_csv(tmp_path / "f" / "tables" / "per_run.csv", index=False)
    with pytest.raises(ValueError, match="battery_result=.*per_run.csv has no column acc"):
        evaluate(EvaluateConfig(battery_result=str(tmp_path / "f"), output_dir=str(tmp_path / "g"), **kw))

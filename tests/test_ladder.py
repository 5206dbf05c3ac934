"""Scaling ladders: rungs, token budgets, learning-rate selection, the parallel launcher."""

from __future__ import annotations

import json
import shutil
import math
import os
import subprocess
import sys

import pandas as pd
import pytest
import torch
import yaml

from attnlab.config import LADDERS, ModelConfig
from attnlab.ladder import check_one_setting, member_name, select_learning_rates, tuned_lr, widened_lr
from attnlab.params import format_ladder, parameter_breakdown
from attnlab.runs import find_runs
from attnlab.training.budget import apply_budget, budget_parameters
from attnlab.training.estimate import TimeEstimate
from test_training import CONFIGS, REPO, compose_config, register_schema, tiny_overrides


def run_overrides(tmp_path, corpus) -> list[str]:
    """The tiny test run without its model shape: the ladder's rungs give that."""
    return [o for o in tiny_overrides(tmp_path, corpus) if not o.startswith("model.")]


def non_embedding(config: ModelConfig) -> int:
    counts = parameter_breakdown(config)
    return counts["total"] - counts["embedding"] - counts["head"]


def test_the_cpu_ladder_spans_ten_times_in_non_embedding_parameters_growing_width_and_depth():
    rungs = [ModelConfig.from_preset(r) for r in LADDERS["cpu"]]
    assert len(rungs) >= 4
    sizes = [non_embedding(c) for c in rungs]
    assert sizes == [26_784, 83_280, 201_280, 397_680]  # exact: 2 heads, SwiGLU 8/3 rounded up to 16
    assert sizes[-1] / sizes[0] >= 10
    for small, large in zip(rungs, rungs[1:]):
        assert large.n_embd > small.n_embd and large.n_layer > small.n_layer
    for c in rungs:
        assert c.padded_vocab_size % 64 == 0 and c.rope_n_elem == c.head_size and c.n_head % 2 == 0
    gpu = [parameter_breakdown(ModelConfig.from_preset(r))["total"] for r in LADDERS["gpu"]]
    assert 15e6 < gpu[0] < 30e6 and 300e6 < gpu[-1] < 450e6
    table = format_ladder("cpu", 128)
    assert "| ladder_c4 | 5 | 80 | 2 | 224 | 1,677,680 | 397,680 | 6.84 |" in table


def test_the_budget_sets_steps_warmup_and_validations_from_baselines_parameters(tmp_path, corpus, caplog):
    cfgs = {v: compose_config([f"variant={v}", *run_overrides(tmp_path, corpus), "model=ladder/c1",
                               "budget.tokens_per_param=2", "trainer.batch_size=8", "trainer.seq_len=128"])
            for v in ("baseline", "diff_attn")}
    for cfg in cfgs.values():
        cfg.validate()
        model = cfg.model.build(cfg.variant, 8000)
        assert budget_parameters(model, "non_embedding") == 26_784  # baseline's, for every variant
        with caplog.at_level("INFO", logger="attnlab.training.budget"):
            apply_budget(cfg, model, train_tokens=10**6)
        # 2 x 26,784 tokens / 1,024 per step = 52.3 -> 53 steps -> 5 validations of 11 steps.
        assert (cfg.trainer.max_steps, cfg.trainer.val_every_n_steps, cfg.optim.warmup_steps) == (55, 11, 6)
    # The log says what was asked and what the rounding gives, without an equation that does not hold.
    assert ("budget: 2 tokens x 26,784 non_embedding parameters = 53,568 tokens, 55 steps of 1,024 tokens "
            "(56,320 tokens, 2.1 per parameter: whole steps, rounded up to 5 validation intervals)") in caplog.text
    total = compose_config([*run_overrides(tmp_path, corpus), "model=ladder/c1", "budget.tokens_per_param=1",
                            "budget.count=total", "trainer.batch_size=8", "trainer.seq_len=128"])
    apply_budget(total, total.model.build(total.variant, 8000), train_tokens=None)  # a generated task: no limit
    assert total.trainer.max_steps == 530  # 538,784 / 1,024 = 526.2 -> 527 -> 5 x 106


def test_a_budget_beyond_the_corpus_is_refused_or_repeats_it_visibly(tmp_path, corpus, caplog):
    cfg = compose_config([*run_overrides(tmp_path, corpus), "model=ladder/c1", "budget.tokens_per_param=2"])
    model = cfg.model.build(cfg.variant, 8000)
    with pytest.raises(ValueError, match=r"exceeds the 1,000-token training split .*budget.repeat_data=true"):
        apply_budget(cfg, model, train_tokens=1000)
    cfg.budget.repeat_data = True
    with caplog.at_level("INFO", logger="attnlab.training.budget"):
        apply_budget(cfg, model, train_tokens=1000)
    assert "passes over the 1,000-token training split" in caplog.text


@pytest.mark.parametrize("override, message", [
    ("budget.tokens_per_param=-1", "budget.tokens_per_param must be positive"),
    ("budget.count=embedding", "unknown budget.count 'embedding'; allowed: non_embedding, total"),
    ("ladder.lr=best", "unknown ladder.lr 'best'; allowed: given, tuned, lower, higher"),
    ("ladder.widen_factor=1", "ladder.widen_factor must be a number above 1, got 1"),
    ("ladder.lr=tuned", "ladder.lr=tuned reads the ladder's runs: set ladder.name= too"),
    ("trainer.threads=0", "trainer.threads must be a positive integer or null"),
])
def test_bad_budget_and_ladder_settings_are_refused_by_name(override, message, tmp_path, corpus):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        compose_config([*tiny_overrides(tmp_path, corpus), override]).validate()


def test_a_tuned_run_cannot_use_a_seed_that_chose_its_learning_rate(tmp_path, corpus):
    cfg = compose_config([*tiny_overrides(tmp_path, corpus), "ladder.name=lad", "ladder.lr=tuned", "seed=100"])
    with pytest.raises(ValueError, match=r"seed=100 is one of ladder.selection_seeds=\[100\]"):
        cfg.validate()
    with pytest.raises(ValueError, match="tune first, e.g. python train.py -m experiment=lad_tune"):
        tuned_lr(tmp_path, "lad", "baseline", "ladder_c1", [100])
    widen = compose_config([*tiny_overrides(tmp_path, corpus), "ladder.name=lad", "ladder.lr=lower", "seed=0"])
    with pytest.raises(ValueError, match=r"ladder.lr=lower widens the learning-rate grid on the selection seeds: "
                                         r"seed=0 is not one of ladder.selection_seeds=\[100\]"):
        widen.validate()
    widen.seed, widen.trainer.devices = 100, 2
    with pytest.raises(ValueError, match=r"ladder.lr=lower decides its rate from the runs on disk in every "
                                         r"process: run it on one device \(trainer.devices=1"):
        widen.validate()


def test_the_learning_rate_is_chosen_on_the_selection_seeds_only_and_a_choice_at_the_edge_is_flagged():
    rows = [("baseline", "c1", lr, seed, loss) for lr, seed, loss in [
        (1e-3, 100, 5.0), (2e-3, 100, 4.8), (4e-3, 100, 4.9),  # selection: 2e-3 inside the grid
        (1e-3, 0, 1.0)]]  # a comparison seed's run must not decide
    rows += [("diff_attn", "c1", lr, 100, loss) for lr, loss in [(1e-3, 5.0), (2e-3, 4.9), (4e-3, 4.7)]]
    frame = pd.DataFrame(rows, columns=["variant", "rung", "lr", "seed", "loss"])
    chosen = select_learning_rates(frame, [100]).set_index("variant")
    assert chosen.loc["baseline", "lr"] == 2e-3 and not chosen.loc["baseline", "at_edge"]
    assert chosen.loc["diff_attn", "lr"] == 4e-3 and chosen.loc["diff_attn", "at_edge"]
    assert chosen.loc["baseline", "grid"] == "0.001, 0.002, 0.004"


def test_a_diverged_rate_is_never_chosen_but_bounds_the_grid():
    frame = pd.DataFrame([("baseline", "c1", lr, 100, loss) for lr, loss in
                          [(2e-3, 5.0), (4e-3, 4.8), (8e-3, float("nan"))]] +
                         [("qk_norm", "c1", 4e-3, 100, 4.9)],  # one rate: at both edges
                         columns=["variant", "rung", "lr", "seed", "loss"])
    chosen = select_learning_rates(frame, [100]).set_index("variant")
    assert chosen.loc["baseline", "lr"] == 4e-3 and not chosen.loc["baseline", "at_edge"]
    assert chosen.loc["baseline", "grid"] == "0.002, 0.004, 0.008 (diverged)"
    assert (chosen.loc["baseline", "lowest_tried"], chosen.loc["baseline", "highest_tried"]) == (2e-3, 8e-3)
    assert chosen.loc["qk_norm", "at_edge"]
    # Two selection seeds: a rate that diverged on one of them is not ranked on the other's loss.
    frame = pd.DataFrame([("baseline", "c1", lr, seed, loss) for lr, seed, loss in
                          [(2e-3, 100, 5.0), (2e-3, 101, 5.1), (4e-3, 100, 4.5), (4e-3, 101, float("nan"))]],
                         columns=["variant", "rung", "lr", "seed", "loss"])
    chosen = select_learning_rates(frame, [100, 101]).iloc[0]
    assert chosen["lr"] == 2e-3 and chosen["selection_runs"] == 2 and chosen["grid"] == "0.002, 0.004 (diverged)"


def _write_run(runs_dir, variant, lr, seed, loss, options=None, tokens_per_param=2.0):
    """What training writes that the ladder's learning-rate choice reads (summary.json, config.yaml)."""
    path = runs_dir / member_name("lad", "ladder_c1", lr) / variant / f"seed{seed}"
    path.mkdir(parents=True)
    (path / "summary.json").write_text(json.dumps({
        "variant": variant, "preset": "ladder_c1", "lr": lr, "seed": seed, "tokens_seen": 100,
        "flops_per_token": 10, "final_val_loss": loss, "parameters": {"total": 10, "embedding": 2, "head": 2}}))
    (path / "config.yaml").write_text(yaml.safe_dump({
        "ladder": {"name": "lad", "selection_seeds": [100]}, "optim": {"lr": lr, "weight_decay": 0.1},
        "resolved_model": {"variant": variant, "variant_options": options or {}},
        "budget": {"tokens_per_param": tokens_per_param}}))


def test_the_grid_widens_one_step_beyond_a_choice_at_its_edge_and_stops_inside(tmp_path):
    for lr, loss in [(4e-3, 5.0), (8e-3, 4.9)]:  # the highest rate tried is the best
        _write_run(tmp_path, "baseline", lr, 100, loss)
    widen = lambda direction: widened_lr(tmp_path, "lad", "baseline", "ladder_c1", [100], direction, 2.0, 100)  # noqa: E731
    assert widen("higher") == (0.016, "ladder.lr=higher: baseline at ladder_c1 chose 0.008 of 0.004, 0.008, "
                                       "its highest: trying 0.016")
    rate, why = widen("lower")
    assert rate is None and why.endswith("not its lowest rate: nothing to train")
    _write_run(tmp_path, "baseline", 0.016, 100, None)  # one step further diverged (its loss reads None)
    assert widen("higher")[0] is None and tuned_lr(tmp_path, "lad", "baseline", "ladder_c1", [100]) == 8e-3
    _write_run(tmp_path, "baseline", 4e-3, 0, 1.0)  # a comparison seed's run never moves the choice
    assert widen("lower")[0] is None
    with pytest.raises(ValueError, match="ladder.lr=lower: no finished run of ladder 'lad' for variant 'qk_norm'"):
        widened_lr(tmp_path, "lad", "qk_norm", "ladder_c1", [100], "lower", 2.0, 100)
    _write_run(tmp_path, "qk_norm", 4e-3, 100, None)
    with pytest.raises(ValueError, match=r"ladder.lr=tuned: every rate tried for 'qk_norm' at rung 'ladder_c1' "
                                         r"diverged \(0.004\); tune lower rates"):
        tuned_lr(tmp_path, "lad", "qk_norm", "ladder_c1", [100])


def test_the_widening_count_keeps_to_the_sweeps_variants_and_rungs(tmp_path):
    from attnlab.ladder import widening

    # The widen estimate reads a sweep's model=ladder/<x> as the rung ladder_<x>: every rung's file says so.
    for path in (CONFIGS / "model" / "ladder").glob("*.yaml"):
        assert yaml.safe_load(path.read_text())["preset"] == f"ladder_{path.stem}", path

    for variant in ("baseline", "qk_norm"):
        _write_run(tmp_path, variant, 4e-3, 100, 5.0)  # one rate tried: at both edges
    assert widening(tmp_path, "lad", [100]) == (2, 2, 2)
    assert widening(tmp_path, "lad", [100], variants=["qk_norm"]) == (1, 1, 1)
    assert widening(tmp_path, "lad", [100], rungs=["ladder_c2"]) == (0, 0, 0)


def test_a_rate_not_yet_run_on_every_selection_seed_does_not_decide_the_widening(tmp_path):
    _write_run(tmp_path, "baseline", 4e-3, 100, 5.0)
    _write_run(tmp_path, "baseline", 4e-3, 101, 5.0)
    _write_run(tmp_path, "baseline", 8e-3, 100, 4.0)  # the other selection seed's run is still to come
    assert widened_lr(tmp_path, "lad", "baseline", "ladder_c1", [100, 101], "higher", 2.0, 101)[0] == 8e-3
    rate, why = widened_lr(tmp_path, "lad", "baseline", "ladder_c1", [100, 101], "higher", 2.0, 100)
    assert rate is None and why.endswith("0.008 has run at seed 100, not yet at every selection seed")
    _write_run(tmp_path, "baseline", 8e-3, 101, 4.0)
    assert widened_lr(tmp_path, "lad", "baseline", "ladder_c1", [100, 101], "higher", 2.0, 100)[0] == 0.016


def test_runs_of_one_variant_and_rung_with_other_settings_are_refused_not_pooled(tmp_path):
    _write_run(tmp_path, "forgetting", 4e-3, 100, 5.0, options={"gate_bias_init": "range"})
    _write_run(tmp_path, "forgetting", 8e-3, 100, 4.9)
    _write_run(tmp_path, "baseline", 8e-3, 100, 4.9)  # another variant may differ
    with pytest.raises(ValueError, match=r"ladder runs of forgetting at ladder_c1 differ in "
                                         r"resolved_model.variant_options: .*gate_bias_init.* fresh results_dir="):
        check_one_setting(find_runs(tmp_path))
    with pytest.raises(ValueError, match="differ in resolved_model.variant_options"):
        tuned_lr(tmp_path, "lad", "forgetting", "ladder_c1", [100])


def test_variants_of_one_rung_trained_on_another_budget_are_refused_not_compared(tmp_path):
    _write_run(tmp_path, "baseline", 4e-3, 100, 5.0)
    _write_run(tmp_path, "gelu_bias", 4e-3, 100, 4.9, options={"x": 1})  # its own attention: a variant's
    check_one_setting(find_runs(tmp_path))
    _write_run(tmp_path, "gelu_bias", 8e-3, 0, 4.9, options={"x": 1}, tokens_per_param=0.5)
    with pytest.raises(ValueError, match=r"ladder runs of gelu_bias at ladder_c1 differ in budget.tokens_per_param"):
        check_one_setting(find_runs(tmp_path))
    # Its other run gone, gelu_bias is one setting, but not the rung's.
    shutil.rmtree(tmp_path / member_name("lad", "ladder_c1", 4e-3) / "gelu_bias")
    with pytest.raises(ValueError, match=r"ladder runs at ladder_c1 differ between variants in "
                                         r"budget.tokens_per_param: 2.0 for baseline in .*, 0.5 for gelu_bias in "):
        check_one_setting(find_runs(tmp_path))


@pytest.mark.slow
def test_a_ladder_run_whose_settings_differ_from_the_ladders_is_refused_before_it_trains(tmp_path, corpus):
    from attnlab.runs import RunDir
    from attnlab.training.run import train

    common = [*tiny_overrides(tmp_path, corpus), "ladder.name=lad", "model.preset=ladder_c1", "model.block_size=32",
              "seed=100"]
    train(compose_config([*common, "optim.lr=1e-3"]))
    changed = [*common, "optim.lr=2e-3", "trainer.batch_size=3"]
    with pytest.raises(ValueError, match=r"ladder runs of baseline at ladder_c1 differ in trainer.batch_size: 2 in "
                                         r".*lad-ladder_c1-lr0.001/baseline/seed100, 3 in .*lr0.002/baseline/seed100"):
        train(compose_config(changed))
    assert not RunDir.for_run(tmp_path / "runs", "lad-ladder_c1-lr0.002", "baseline", 100).path.exists()
    train(compose_config([*common, "optim.lr=2e-3"]))  # the same settings at another rate: a member


def test_the_ladder_experiments_compose_and_count_their_runs():
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    from attnlab.training.estimate import count_jobs, parallel_workers

    for name, lr in (("ladder", "tuned"), ("ladder_tune", "given"), ("ladder_widen", "higher")):
        cfg = compose_config([f"experiment={name}", *(["seed=100"] if name == "ladder_widen" else [])])
        cfg.validate()
        assert (cfg.ladder.name, cfg.ladder.lr, cfg.budget.tokens_per_param, cfg.trainer.threads) == \
            ("ladder", lr, 2.0, 1)
    base = OmegaConf.load(CONFIGS / "experiment" / "ladder.yaml").hydra
    # rungs x variants x learning rates (one selection seed); x directions for the widening
    for name, jobs in (("ladder_tune", 4 * 6 * 3), ("ladder_widen", 4 * 6 * 2)):
        params = {**base.sweeper.params, **OmegaConf.load(CONFIGS / "experiment" / f"{name}.yaml").hydra.sweeper.params}
        config = OmegaConf.create({"hydra": {
            "sweeper": {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper", "params": params},
            "launcher": {"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher",
                         "n_jobs": 2},
            "overrides": {"task": [f"experiment={name}"]}}})
        with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
            assert count_jobs(config) == jobs, name
    assert parallel_workers(config) == 2
    assert TimeEstimate("ladder", 76).message(72, 2) == "ladder: 72 runs x ~76 s on 2 parallel workers ≈ 45.6 min"
    # Rungs differ in time: each (measured) rung's share of the runs, in waves of the workers.
    estimate = OmegaConf.load(CONFIGS / "experiment" / "ladder.yaml").hydra.callbacks.estimate
    assert set(base.sweeper.params.model.split(",")) == set(estimate.seconds_by_model)
    by_rung = TimeEstimate("ladder", 57, seconds_by_model={"ladder/c1": 18, "ladder/c4": 164})
    assert by_rung.message_by_model(6, ["ladder/c4", "ladder/c1"], 2) == (
        "ladder: 6 runs x ~18 s (ladder/c1) to ~164 s (ladder/c4) on 2 parallel workers ≈ 6.1 min")
    assert by_rung.run_seconds(OmegaConf.create({}), "ladder/c4") == 164
    assert by_rung.run_seconds(OmegaConf.create({}), "ladder/c2") == 57  # not measured: the average
    assert member_name("ladder", "ladder_c2", 0.004) == "ladder-ladder_c2-lr0.004"


def _train_cli(args: list[str], cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, str(REPO / "train.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_the_joblib_launcher_gives_bitwise_the_runs_of_the_sequential_sweep(tmp_path, corpus):
    sweep = ["-m", "variant=baseline,gated_attn", *tiny_overrides(tmp_path, corpus), "trainer.threads=1"]
    for launcher in ("basic", "joblib"):
        result = _train_cli([*sweep, f"experiment_name={launcher}", f"hydra/launcher={launcher}",
                             *(["hydra.launcher.n_jobs=2"] if launcher == "joblib" else [])], cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
    for variant in ("baseline", "gated_attn"):
        runs = {launcher: next(r for r in find_runs(tmp_path / "runs", launcher) if r.variant == variant)
                for launcher in ("basic", "joblib")}
        summaries = {k: r.load_summary() for k, r in runs.items()}
        assert summaries["basic"]["final_val_loss"] == summaries["joblib"]["final_val_loss"]
        assert summaries["joblib"]["device"].endswith("1 threads)")
        weights = {k: torch.load(r.last_checkpoint, map_location="cpu", weights_only=False)["state_dict"]
                   for k, r in runs.items()}
        assert weights["basic"].keys() == weights["joblib"].keys()
        assert all(torch.equal(weights["basic"][key], weights["joblib"][key]) for key in weights["basic"])


@pytest.mark.slow
def test_a_tuned_ladder_run_trains_at_the_rate_its_selection_seed_chose(tmp_path, corpus):
    common = [*tiny_overrides(tmp_path, corpus), "ladder.name=lad", "model.preset=ladder_c1",
              "model.block_size=32", "trainer.threads=1"]
    tune = _train_cli(["-m", *common, "optim.lr=1e-4,3e-3", "seed=100", "hydra/launcher=joblib",
                       "hydra.launcher.n_jobs=2"], cwd=tmp_path)
    assert tune.returncode == 0, tune.stderr[-3000:]
    losses = {r.path.parent.parent.name: r.load_summary()["final_val_loss"] for r in find_runs(tmp_path / "runs")}
    assert sorted(losses) == ["lad-ladder_c1-lr0.0001", "lad-ladder_c1-lr0.003"]
    best = min(losses, key=losses.get)
    compare = _train_cli([*common, "ladder.lr=tuned", "seed=0"], cwd=tmp_path)
    assert compare.returncode == 0, compare.stderr[-3000:]
    run = next(r for r in find_runs(tmp_path / "runs", best) if r.seed == 0)
    assert run.load_summary()["lr"] == float(best.removeprefix("lad-ladder_c1-lr"))


@pytest.mark.slow
def test_the_widening_sweep_trains_only_beyond_a_choice_at_the_edge(tmp_path, corpus):
    common = [*tiny_overrides(tmp_path, corpus), "ladder.name=lad", "model.preset=ladder_c1",
              "model.block_size=32", "trainer.threads=1", "seed=100"]
    assert _train_cli([*common, "optim.lr=3e-3"], cwd=tmp_path).returncode == 0
    # One rate tried: the choice is at both edges; the sweep's estimate counts what will train.
    widen = ["-m", *common, "ladder.lr=lower,higher", "+hydra.callbacks.estimate._target_="
             "attnlab.training.estimate.WidenEstimate", "+hydra.callbacks.estimate.experiment=widen",
             "+hydra.callbacks.estimate.seconds_per_run=10"]
    first = _train_cli(widen, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "choices under " in first.stdout and ", 1 at the lowest rate tried and 1 at the highest; 2 runs x ~10 s" \
        in first.stdout
    # Each job decides on the runs finished when it starts; repeated, the sweep stops with the choice
    # inside a grid of steps of 2 around the first rate.
    for _ in range(6):
        if "nothing to widen" in (out := _train_cli(widen, cwd=tmp_path)).stdout + out.stderr:
            break
        assert out.returncode == 0, out.stderr[-3000:]
    else:
        pytest.fail("the grid was still being widened after 6 sweeps")
    frame = pd.DataFrame([{"variant": "baseline", "rung": "ladder_c1", "lr": r.load_summary()["lr"], "seed": 100,
                           "loss": r.load_summary()["final_val_loss"]} for r in find_runs(tmp_path / "runs")])
    chosen = select_learning_rates(frame, [100]).iloc[0]
    assert not chosen["at_edge"], chosen
    steps = sorted(round(math.log2(lr / 3e-3)) for lr in frame["lr"])
    assert steps == list(range(steps[0], steps[-1] + 1)) and len(steps) >= 3
    assert all(math.isclose(lr, 3e-3 * 2 ** round(math.log2(lr / 3e-3))) for lr in frame["lr"])


@pytest.mark.slow
def test_the_optuna_sweeper_searches_the_learning_rate_on_the_loss_train_py_returns(tmp_path, corpus):
    # As the ladder's wider search: each trial's rate is its own experiment (ladder.name), so trials
    # at different rates never claim the same run directory.
    result = _train_cli(["-m", *tiny_overrides(tmp_path, corpus), "trainer.threads=1", "hydra/sweeper=optuna",
                         "ladder.name=lad", "model.preset=ladder_c1", "model.block_size=32",
                         "hydra.sweeper.n_trials=3", "hydra.sweeper.sampler.seed=0",
                         "optim.lr=tag(log,interval(1e-4,1e-2))",
                         f"hydra.sweep.dir={tmp_path / 'sweep'}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    summaries = [r.load_summary() for r in find_runs(tmp_path / "runs")]
    rates = sorted(s["lr"] for s in summaries)
    assert len(set(rates)) == 3 and 1e-4 <= rates[0] and rates[-1] <= 1e-2
    # The study's result names the trial whose returned loss was lowest.
    best = (tmp_path / "sweep" / "optimization_results.yaml").read_text()
    lowest = min(summaries, key=lambda s: s["best_val_loss"])
    assert f"optim.lr: {lowest['lr']}" in best, best


@pytest.mark.parametrize("experiment", ["ladder", "ladder_tune", "battery"])
@pytest.mark.parametrize("launcher", ["basic", "joblib"])
def test_the_parallel_experiments_compose_under_either_launcher(experiment, launcher):
    from hydra import compose, initialize_config_dir

    register_schema()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        cfg = compose(config_name="train", overrides=[f"experiment={experiment}", f"hydra/launcher={launcher}"],
                      return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("BasicLauncher" if launcher == "basic" else "JoblibLauncher")


def test_an_existing_ladder_run_is_told_what_a_ladder_is_named_by(tmp_path, corpus):
    from attnlab.runs import RunDir
    from attnlab.training.rundir import claim_run_dir

    cfg = compose_config([*run_overrides(tmp_path, corpus), "ladder.name=lad", "experiment_name=fresh"])
    run = RunDir.for_run(cfg.results_dir, member_name("lad", "ladder_c1", 1e-3), "baseline", 0)
    run.path.mkdir(parents=True)
    (run.path / "summary.json").write_text("{}")
    with pytest.raises(FileExistsError, match=r"already exists; pass resume=auto .* another results_dir= "
                                              r"\(a ladder names each run lad-<rung>-lr<rate>/<variant>/seed<n>, "
                                              r"whatever experiment_name is\)"):
        claim_run_dir(run, cfg)
    assert (run.path / "summary.json").read_text() == "{}"


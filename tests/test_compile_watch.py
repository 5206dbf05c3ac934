"""A compiled run logs the graphs compiled by each validation and warns when a later one recompiles.

Dynamo's capture is real; the ``eager`` backend stands in for Inductor so that no C++ is compiled.
"""

import logging

import lightning as L
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

from attnlab.model import GPT
from attnlab.training.compile_watch import CompileWatch
from attnlab.training.run import train
from test_training import compose_config, tiny_overrides

pytestmark = pytest.mark.slow  # training runs


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_a_compiled_run_compiles_everything_by_its_first_validation(tmp_path, corpus, monkeypatch, caplog):
    compile_blocks = GPT.compile_blocks
    monkeypatch.setattr(GPT, "compile_blocks", lambda self, **kw: compile_blocks(self, backend="eager", **kw))
    config = compose_config(["experiment_name=unit", *tiny_overrides(tmp_path, corpus), "trainer.compile=true",
                             "trainer.max_steps=6", "trainer.val_every_n_steps=2"])
    with caplog.at_level(logging.WARNING, logger="attnlab.training.compile_watch"):
        run = train(config)
    graphs = pd.read_csv(run.metrics)["compile/graphs"].dropna().tolist()
    # Training, validation and the head-score probe compiled once each by the first validation's end.
    assert len(graphs) == 3 and graphs[0] >= 3
    assert graphs == [graphs[0]] * 3
    assert not [r for r in caplog.records if r.name == "attnlab.training.compile_watch"]


def test_runs_of_a_sweep_in_one_process_each_compile_their_own_graphs(tmp_path, corpus, monkeypatch):
    """Every model's blocks share Block.forward's Dynamo cache: without a reset per run, the fourth
    variant of an in-process sweep would find Dynamo's recompile limit (8) reached and train eager."""
    compile_blocks = GPT.compile_blocks
    monkeypatch.setattr(GPT, "compile_blocks", lambda self, **kw: compile_blocks(self, backend="eager", **kw))
    first = []
    for variant in ("baseline", "qk_scale", "sep_qkv", "gelu_bias"):
        config = compose_config(["experiment_name=unit", *tiny_overrides(tmp_path, corpus), "trainer.compile=true",
                                 f"variant={variant}", "trainer.max_steps=2"])
        first.append(pd.read_csv(train(config).metrics)["compile/graphs"].dropna().iloc[0])
    assert min(first) >= 3, first  # training, validation and the head-score probe, in every run


def test_a_compiled_run_that_compiles_nothing_is_warned_about(tmp_path, corpus, monkeypatch, caplog):
    monkeypatch.setattr(GPT, "compile_blocks", lambda self, **kw: None)  # as if Dynamo had given up
    config = compose_config(["experiment_name=unit", *tiny_overrides(tmp_path, corpus), "trainer.compile=true"])
    with caplog.at_level(logging.WARNING, logger="attnlab.training.compile_watch"):
        train(config)
    assert any("compiled no graph by the first validation" in r.getMessage() for r in caplog.records)


def test_an_uncompiled_run_logs_no_compile_counts(tmp_path, corpus):
    run = train(compose_config(["experiment_name=unit", *tiny_overrides(tmp_path, corpus)]))
    assert "compile/graphs" not in pd.read_csv(run.metrics).columns


class RecompilingAtEachValidation(L.LightningModule):
    """Its validation passes a new string each time: Dynamo guards on its value, and a string never
    becomes dynamic as a changing number would."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.scaled = torch.compile(lambda x, tag: self.layer(x) * len(tag), backend="eager")
        self.validations = 0

    def training_step(self, batch, batch_idx):
        return self.scaled(batch, "train").square().mean()

    def validation_step(self, batch, batch_idx):
        self.scaled(batch, f"validation {self.validations}")

    def on_validation_epoch_end(self) -> None:
        self.validations += 1

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_a_recompile_after_the_first_validation_is_logged_and_warned_about(tmp_path, caplog):
    watch = CompileWatch()
    data = DataLoader(torch.randn(8, 4), batch_size=4)
    trainer = L.Trainer(accelerator="cpu", max_steps=6, val_check_interval=2, check_val_every_n_epoch=None,
                        callbacks=[watch], logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        num_sanity_val_steps=0, default_root_dir=tmp_path)
    with caplog.at_level(logging.WARNING, logger="attnlab.training.compile_watch"):
        trainer.fit(RecompilingAtEachValidation(), data, data)
    assert len(watch.at_validation) == 3
    assert watch.at_validation[0] < watch.at_validation[1] < watch.at_validation[2]
    warnings = [r.getMessage() for r in caplog.records if r.name == "attnlab.training.compile_watch"]
    assert len(warnings) == 2
    assert "between validations 1 and 2 (step 4)" in warnings[0]
    assert "between validations 2 and 3 (step 6)" in warnings[1]
    assert "TORCH_LOGS=recompiles" in warnings[0]

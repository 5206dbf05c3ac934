"""Watching ``torch.compile`` during a compiled run: graphs compiled by each validation's end.

A compiled run compiles its training step once, and its validation, head-score probe and
last partial batch once each, all by the end of the first validation
(``tests/test_compile_watch.py`` trains one and sees it; ``tests/test_compile.py`` bounds the
compiles of each kind of call). A graph compiled after that is a recompile that can come back at every
validation and cost minutes of a GPU run each time, so it is logged and warned about.
"""

from __future__ import annotations

import logging

import lightning as L
from torch._dynamo.utils import counters

log = logging.getLogger(__name__)


def compiled_graphs() -> int:
    """Graphs Dynamo has handed to a compiler backend in this process so far."""
    return counters["stats"]["unique_graphs"]


class CompileWatch(L.Callback):
    """Logs ``compile/graphs`` (graphs compiled since fitting began) at each validation's end, and
    warns when a validation after the first finds more than the one before it, or the first finds
    none (the compiled run runs eager)."""

    def __init__(self) -> None:
        self._start = 0
        self.at_validation: list[int] = []  # graphs compiled by each validation's end, this fit

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Differences, not totals: Dynamo's counters belong to the process, which may have run others.
        self._start = compiled_graphs()
        self.at_validation = []

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        graphs = compiled_graphs() - self._start
        pl_module.log("compile/graphs", float(graphs), rank_zero_only=True)
        if not self.at_validation and graphs == 0 and trainer.is_global_zero:
            log.warning("trainer.compile is on but torch.compile compiled no graph by the first validation "
                        "(step %d): the model runs eager, e.g. past Dynamo's recompile limit; "
                        "TORCH_LOGS=recompiles says why", trainer.global_step)
        if self.at_validation and graphs > self.at_validation[-1] and trainer.is_global_zero:
            log.warning(
                "torch.compile compiled %d more graph(s) between validations %d and %d (step %d), after "
                "the run's shapes had all compiled: each is a recompile that may recur and cost its "
                "compile time again; TORCH_LOGS=recompiles names the guard that failed",
                graphs - self.at_validation[-1], len(self.at_validation), len(self.at_validation) + 1,
                trainer.global_step)
        self.at_validation.append(graphs)

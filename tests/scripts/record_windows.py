"""Train with the given train.py overrides and write, per rank, the training windows that
rank read to $WINDOWS_OUT/rank<k>.json. Lightning's DDP launcher re-runs this script once
per extra process, so it works for trainer=ddp with several CPU processes.

With $PREEMPT_AT=<step>:<rank>, that rank sends itself SIGTERM during that optimizer step, as a
cluster scheduler preempting one process would."""

import json
import os
import sys
from pathlib import Path

import lightning as L

from attnlab.training.run import train
from test_resume import PreemptAt
from test_training import compose_config


class RecordWindows(L.Callback):
    def __init__(self) -> None:
        self.windows: list[list[int]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.windows.extend(batch[0].tolist())

    def on_train_end(self, trainer, pl_module) -> None:
        out = Path(os.environ["WINDOWS_OUT"]) / f"rank{trainer.global_rank}.json"
        out.write_text(json.dumps(self.windows))


if __name__ == "__main__":
    callbacks = [RecordWindows()]
    if os.environ.get("PREEMPT_AT"):
        step, rank = (int(part) for part in os.environ["PREEMPT_AT"].split(":"))
        callbacks.append(PreemptAt(step, rank))
    train(compose_config(sys.argv[1:]), extra_callbacks=callbacks)

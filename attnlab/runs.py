"""The run directory: its layout, and the one reader used by evaluate, notebooks and figures.

    results/runs/<experiment>/<variant>/seed<k>/
        config.yaml         resolved training configuration
        summary.json        final numbers (written when training ends)
        metrics.csv         every logged scalar (Lightning CSVLogger)
        tensorboard/        TensorBoard event files
        checkpoints/        last.ckpt, best.ckpt
        tokenizer.model     the SentencePiece model the run was trained with
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:  # torch and sentencepiece load only when a model or tokenizer is asked for
    from attnlab.data.tokenizer import Tokenizer
    from attnlab.model import GPT


CHECKPOINTS = ("best", "last")


@dataclass(frozen=True)
class RunDir:
    path: Path

    @classmethod
    def for_run(cls, results_dir: str | Path, experiment: str, variant: str, seed: int) -> RunDir:
        return cls(Path(results_dir) / experiment / variant / f"seed{seed}")

    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def summary(self) -> Path:
        return self.path / "summary.json"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.csv"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / "last.ckpt"

    @property
    def best_checkpoint(self) -> Path:
        return self.checkpoints / "best.ckpt"

    @property
    def tokenizer(self) -> Path:
        return self.path / "tokenizer.model"

    @property
    def tensorboard(self) -> Path:
        return self.path / "tensorboard"

    @property
    def variant(self) -> str:
        return self.path.parent.name

    @property
    def seed(self) -> int:
        return int(self.path.name.removeprefix("seed"))

    def is_complete(self) -> bool:
        return self.summary.exists()

    def load_summary(self) -> dict:
        if not self.summary.exists():
            raise FileNotFoundError(f"{self.path} has no summary.json: the run did not finish "
                                    f"(resume it with resume=auto)")
        return json.loads(self.summary.read_text())

    def load_config(self) -> dict:
        """The resolved training configuration (``resolved_model`` holds the ModelConfig)."""
        import yaml

        return yaml.safe_load(self.config.read_text())

    def load_model(self, which: str = "best") -> GPT:
        """The run's ``GPT`` from ``checkpoints/<which>.ckpt``, checked against the run itself.

        A checkpoint copied in from another run (another variant or shape) is refused
        rather than analysed under the wrong name; one of a run resumed under another
        attention kernel (a runtime setting) is accepted.
        """
        from attnlab.checkpoint import check_checkpoint_matches, load_model

        if which not in CHECKPOINTS:
            raise ValueError(f"unknown checkpoint {which!r}; allowed: {', '.join(CHECKPOINTS)}")
        path = self.checkpoints / f"{which}.ckpt"
        check_checkpoint_matches(path, self.load_config().get("resolved_model", {}), against="run")
        return load_model(path, expect_variant=self.variant)

    def load_tokenizer(self) -> Tokenizer:
        from attnlab.data.tokenizer import Tokenizer

        return Tokenizer(self.tokenizer)

    def load_metrics(self) -> pd.DataFrame:
        """Logged scalars, one row per step, columns merged across train/val rows."""
        frame = pd.read_csv(self.metrics)
        return frame.groupby("step", as_index=False).first()


def find_runs(results_dir: str | Path, experiment: str | None = None) -> list[RunDir]:
    """Finished runs (those with summary.json) of one experiment, or of all experiments."""
    root = Path(results_dir)
    pattern = f"{experiment}/*/seed*/summary.json" if experiment else "*/*/seed*/summary.json"
    # seed<k> only: run directories moved aside by overwrite=true (seed0.replaced-...) are history.
    return [RunDir(p.parent) for p in sorted(root.glob(pattern)) if re.fullmatch(r"seed\d+", p.parent.name)]


def experiment_runs(results_dir: str | Path, experiment: str) -> list[RunDir]:
    """``find_runs`` for one experiment, raising (with the experiments there are) if it has none."""
    runs = find_runs(results_dir, experiment)
    if not runs:
        available = sorted({r.path.parent.parent.name for r in find_runs(results_dir)})
        raise FileNotFoundError(f"no finished runs of experiment {experiment!r} under {results_dir}; "
                                f"available: {', '.join(available) or 'none'}")
    return runs


def latest_experiment(results_dir: str | Path) -> str:
    runs = find_runs(results_dir)
    if not runs:
        raise FileNotFoundError(f"no finished runs under {results_dir}; train some first, e.g. "
                                f"`python train.py experiment=demo`")
    newest = max(runs, key=lambda r: r.summary.stat().st_mtime)
    return newest.path.parent.parent.name

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
import os
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
        try:
            summary = json.loads(self.summary.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{self.summary} is not valid JSON ({err})") from None
        if not isinstance(summary, dict):
            raise ValueError(f"{self.summary} holds a {type(summary).__name__}, not a JSON object")
        return summary

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
        try:
            frame = pd.read_csv(self.metrics)
        except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as err:
            raise ValueError(f"{self.metrics} is not a readable CSV file ({err})") from None
        if "step" not in frame:
            raise ValueError(f"{self.metrics} has no step column")
        return frame.groupby("step", as_index=False).first()

    def problems(self, checkpoint: str | None = None) -> list[str]:
        """Why this run cannot be evaluated, one reason per unreadable part (empty: it can).

        Reads summary.json (and the keys the tables need) and metrics.csv; with
        ``checkpoint`` (best or last) also config.yaml, tokenizer.model and that checkpoint's
        header, checked against the run (the weights are memory-mapped, not read).
        """
        if not self.summary.exists():  # still training, stopped, or failed: its other files are partial too
            return ["unfinished: no summary.json (resume it with resume=auto)"]
        found = []
        try:
            summary = self.load_summary()
            lacking = [key for key in ("steps", "tokens_seen") if key not in summary]
            if not isinstance(summary.get("parameters"), dict) or "total" not in summary["parameters"]:
                lacking.insert(0, "parameters.total")
            if lacking:
                found.append(f"summary.json lacks {', '.join(lacking)}")
            if summary.get("diverged"):  # a ladder's tuning run: a result about its rate, not a model
                found.append(f"diverged: {summary['diverged']}")
        except (OSError, ValueError) as err:
            found.append(f"summary.json unreadable: {err}")
        try:
            self.load_metrics()
        except FileNotFoundError:
            found.append("no metrics.csv")
        except (OSError, ValueError) as err:
            found.append(f"metrics.csv unreadable: {err}")
        if checkpoint is not None:
            found += self._model_problems(checkpoint)
        return [reason.replace(f"{self.path}{os.sep}", "") for reason in found]  # paths relative to the run

    def _model_problems(self, which: str) -> list[str]:
        import yaml

        from attnlab.checkpoint import check_checkpoint_matches, is_checkpoint

        path = self.checkpoints / f"{which}.ckpt"
        if not self.tokenizer.is_file():
            return ["no tokenizer.model"]
        if not is_checkpoint(path):
            return [f"no checkpoints/{which}.ckpt"]
        try:
            check_checkpoint_matches(path, self.load_config().get("resolved_model", {}), against="run")
        except (OSError, ValueError, AttributeError, yaml.YAMLError) as err:
            return [f"checkpoints/{which}.ckpt unusable: {err}"]
        return []


def find_runs(results_dir: str | Path, experiment: str | None = None) -> list[RunDir]:
    """Finished runs (those with summary.json) of one experiment, or of all experiments."""
    root = Path(results_dir)
    pattern = f"{experiment}/*/seed*/summary.json" if experiment else "*/*/seed*/summary.json"
    # seed<k> only: run directories moved aside by overwrite=true (seed0.replaced-...) are history.
    return [RunDir(p.parent) for p in sorted(root.glob(pattern)) if re.fullmatch(r"seed\d+", p.parent.name)]


def experiment_run_dirs(results_dir: str | Path, experiment: str) -> list[RunDir]:
    """Every run directory of one experiment, finished or not (``RunDir.problems`` tells which can be read)."""
    return [RunDir(p) for p in sorted((Path(results_dir) / experiment).glob("*/seed*"))
            if p.is_dir() and re.fullmatch(r"seed\d+", p.name)]


def experiment_runs(results_dir: str | Path, experiment: str) -> list[RunDir]:
    """``find_runs`` for one experiment, raising (with the experiments there are) if it has none."""
    runs = find_runs(results_dir, experiment)
    if not runs:
        available = sorted({r.path.parent.parent.name for r in find_runs(results_dir)})
        raise FileNotFoundError(f"no finished runs of experiment {experiment!r} under {results_dir}; "
                                f"available: {', '.join(available) or 'none'}")
    return runs


def latest_experiment(results_dir: str | Path, with_text: bool = False) -> str:
    """The experiment of the newest finished run; ``with_text``: of the newest one trained on text
    (with a ``tokenizer.model``, which samples and heatmaps need; a synthetic task's runs have none)."""
    runs = [r for r in find_runs(results_dir) if not with_text or r.tokenizer.is_file()]
    if not runs:
        kind = "finished runs trained on text" if with_text else "finished runs"
        raise FileNotFoundError(f"no {kind} under {results_dir}; train some first, e.g. "
                                f"`python train.py experiment=demo`")
    newest = max(runs, key=lambda r: r.summary.stat().st_mtime)
    return newest.path.parent.parent.name

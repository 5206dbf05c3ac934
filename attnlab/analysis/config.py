"""Typed configuration of ``evaluate.py``: the schema ``configs/evaluate/evaluate.yaml`` composes into.

``Optional[...]`` rather than ``X | None`` because OmegaConf builds its schema
from these annotations.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from attnlab.analysis.samples import DEFAULT_PROMPTS
from attnlab.generate import SamplingConfig
from attnlab.runs import CHECKPOINTS

DEFAULT_LADDER_RESULT = "reference/ladder"  # the committed CPU ladder, relative to the working directory
OUTPUTS = ("tables", "figures", "samples", "heatmaps", "attention_stats", "head_scores", "loss_by_position")


@dataclass
class EvaluateConfig:
    experiment: Optional[str] = None  # None: the experiment with the newest finished run
    runs_dir: str = "results/runs"
    output_dir: Optional[str] = None  # None: <runs_dir>/../<experiment>, i.e. results/<experiment>
    outputs: list[str] = field(default_factory=lambda: list(OUTPUTS))
    baseline: str = "baseline"  # the reference variant every other one is compared with (no runs: no comparison)
    checkpoint: str = "best"  # best or last, for every output that needs a model
    model_seed: Optional[int] = None  # whose checkpoint gives samples/heatmaps; None: lowest seed
    confidence: float = 0.95
    alpha: float = 0.05  # significance level of the tests against the baseline (Holm-corrected)
    power: float = 0.8  # for the minimum detectable difference in the vs_baseline table
    bootstrap_resamples: int = 10_000  # paired bootstrap interval of the difference
    bootstrap_seed: int = 0  # its RNG seed: the interval is the same on every evaluation
    allow_mixed_data: bool = False  # tabulate runs trained on different data (with a warning)
    prompts: list[str] = field(default_factory=lambda: list(DEFAULT_PROMPTS))
    heatmap_prompt: Optional[str] = None  # None: the first prompt
    heatmap_layers: Optional[list[int]] = None  # None: every layer
    device: str = "cpu"
    # head_scores: random segments of distinct token ids (no special ids) repeated twice after <s>,
    # drawn from their own seed (shortened to fit a model's block_size: [<s>] + 2 segments)
    head_probe_sequences: int = 16
    head_probe_segment_len: int = 32
    head_probe_seed: int = 0
    position_windows: int = 32  # loss_by_position: evenly spaced validation windows per run
    # A battery's evaluation ranks its variants against this ladder's compute multipliers where its
    # runs exist (under ladder_runs_dir; None: runs_dir); null: no comparison. Without its runs, a
    # ladder's evaluation directory (tables/per_run.csv + evaluation.json) stands in for them: by
    # default the committed CPU ladder reference, read relative to the working directory.
    ladder: Optional[str] = "ladder"
    ladder_runs_dir: Optional[str] = None
    ladder_result: Optional[str] = DEFAULT_LADDER_RESULT
    # A battery's evaluation directory (tables/per_run.csv + evaluation.json) to evaluate again
    # without its runs, e.g. the committed reference/battery against a newer ladder; null: from runs.
    battery_result: Optional[str] = None
    # A ladder's evaluation directory, to evaluate again without its runs (the committed
    # reference/ladder with a newer attnlab); null: from runs.
    ladder_again: Optional[str] = None
    sampling: SamplingConfig = field(default_factory=SamplingConfig)

    def output_path(self, name: str) -> Path:
        """Where the evaluation of experiment ``name`` goes: output_dir, else results/<name> beside the runs."""
        return Path(self.output_dir) if self.output_dir else Path(self.runs_dir).parent / name

    def output_path_reading(self, setting: str, kind: str, name: str) -> Path:
        """``output_path`` of an evaluation read back from the directory in ``setting``
        (``battery_result``, ``ladder_again``), the evaluation of ``kind`` ``name``: refused where
        ``experiment`` names another, or where it would write over the directory it reads."""
        result_dir = getattr(self, setting)
        if self.experiment is not None and self.experiment != name:
            raise ValueError(f"experiment={self.experiment!r} but {setting}={result_dir!r} is the evaluation of "
                             f"{kind} {name!r}; set experiment={name} or leave it out")
        out = self.output_path(name)
        if out.resolve() == Path(result_dir).resolve():
            raise ValueError(f"output directory {out} is {setting}'s own, which this evaluation reads; set "
                             f"output_dir=<another path>")
        return out

    def validate(self) -> None:
        """Fail fast, naming the bad value and what is allowed."""
        unknown = [o for o in self.outputs if o not in OUTPUTS]
        if unknown:
            raise ValueError(f"unknown outputs {unknown}; allowed: {', '.join(OUTPUTS)}")
        if self.checkpoint not in CHECKPOINTS:
            raise ValueError(f"unknown checkpoint {self.checkpoint!r}; allowed: {', '.join(CHECKPOINTS)}")
        for name in ("confidence", "alpha", "power"):
            value = getattr(self, name)
            if not 0.0 < value < 1.0:
                raise ValueError(f"{name} must be in (0, 1), got {value}")
        for name, least in (("head_probe_sequences", 1), ("head_probe_segment_len", 2), ("position_windows", 1)):
            if getattr(self, name) < least:
                raise ValueError(f"{name} must be >= {least}, got {getattr(self, name)}")
        if self.bootstrap_resamples < 1:
            raise ValueError(f"bootstrap_resamples must be >= 1, got {self.bootstrap_resamples}")
        if not self.prompts or any(not p for p in self.prompts):
            raise ValueError(f"prompts must be a non-empty list of non-empty strings, got {self.prompts!r}")
        if self.experiment is not None and (not self.experiment or "/" in self.experiment):
            raise ValueError(f"experiment must be a name without '/', got {self.experiment!r}")
        SamplingConfig(**vars(self.sampling))  # re-run its checks on the overridden values
        if self.battery_result is not None and self.ladder_again is not None:
            raise ValueError(f"battery_result={self.battery_result!r} and ladder_again={self.ladder_again!r}: "
                             f"one evaluation directory at a time")
        # The default may be missing (run from another directory: no agreement, said in evaluation.json);
        # a directory named on purpose must exist.
        if self.ladder_result not in (None, DEFAULT_LADDER_RESULT) and not Path(self.ladder_result).is_dir():
            raise FileNotFoundError(f"ladder_result={self.ladder_result!r}: no such directory; pass a ladder's "
                                    f"evaluation directory (python evaluate.py experiment=<ladder> writes one), "
                                    f"or ladder_result=null for no comparison with a ladder")


def register_schema() -> None:
    """Make ``EvaluateConfig`` the schema ``configs/evaluate/evaluate.yaml`` composes into."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="evaluate_schema", node=EvaluateConfig)

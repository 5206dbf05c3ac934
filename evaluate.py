"""Evaluate an experiment's finished runs: ``python evaluate.py [experiment=demo] [key=value ...]``
(or a committed evaluation again, from its per-run numbers: ``python evaluate.py
battery_result=reference/battery`` for a battery's, ``ladder_again=reference/ladder`` for a ladder's).

Writes tables, figures, generation samples, attention heatmaps and statistics to
``results/<experiment>/`` (see attnlab/analysis/pipeline.py; schema: attnlab/analysis/config.py).
"""

import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from attnlab.analysis.config import EvaluateConfig, register_schema

register_schema()


@hydra.main(version_base=None, config_path="configs/evaluate", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    from attnlab.analysis.pipeline import evaluate

    try:
        # Building the dataclasses runs their value checks (e.g. sampling.temperature).
        config: EvaluateConfig = OmegaConf.to_object(cfg)
        out = evaluate(config)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(f"evaluation written to {out}")


if __name__ == "__main__":
    main()

"""Parameter counts per variant for a preset: ``python -m attnlab.params seed100m``."""

from __future__ import annotations

import argparse
import dataclasses

import torch

from attnlab.config import PRESETS, ModelConfig
from attnlab.model import GPT
from variants import available_variants, get_variant

PARTS = ("embedding", "attention", "mlp", "norms", "head")


def baseline_twin(config: ModelConfig) -> ModelConfig:
    """``config`` with the ``baseline`` block: the variant's options dropped and its model-wide
    settings (``model_settings``) back at their defaults, so that the difference in parameters
    is what the variant adds (``gelu_bias``'s MLP biases included)."""
    defaults = {f.name: f.default for f in dataclasses.fields(ModelConfig)}
    reset = {key: defaults[key] for key in get_variant(config.variant).model_settings}
    return dataclasses.replace(config, variant="baseline", variant_options={}, **reset)


def parameter_breakdown(config: ModelConfig) -> dict[str, int]:
    """Counts by part, plus ``total`` and ``extra_vs_baseline`` (what the variant adds)."""
    # The meta device allocates nothing, so even large presets are counted instantly.
    with torch.device("meta"):
        model = GPT(config)
        baseline = GPT(baseline_twin(config))
    counts = dict.fromkeys(PARTS, 0)
    for name, p in model.named_parameters():
        if name.startswith("wte."):
            part = "embedding"
        elif name.startswith("lm_head."):
            part = "head"
        elif ".attn." in name:
            part = "attention"
        elif ".mlp." in name:
            part = "mlp"
        else:
            part = "norms"
        counts[part] += p.numel()
    counts["total"] = sum(counts[p] for p in PARTS)
    counts["extra_vs_baseline"] = counts["total"] - sum(p.numel() for p in baseline.parameters())
    return counts


def format_table(preset: str) -> str:
    header = ["variant", *PARTS, "total", "extra_vs_baseline", "total (M)"]
    rows, notes = [], []
    for variant in available_variants():
        config = ModelConfig.from_preset(preset, variant=variant)
        reason = get_variant(variant).unsupported(config)
        if reason is not None:  # e.g. diff_attn at a one-head preset
            rows.append([variant, *["-"] * (len(header) - 1)])
            notes.append(f"{variant}: {reason}")
            continue
        counts = parameter_breakdown(config)
        rows.append([variant, *(f"{counts[k]:,}" for k in (*PARTS, "total", "extra_vs_baseline")),
                     f"{counts['total'] / 1e6:.2f}"])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    lines += [""] * bool(notes) + [f"- {note}" for note in notes]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("preset", nargs="?", default="seed100m", choices=sorted(PRESETS))
    args = parser.parse_args(argv)
    print(f"Parameters per variant, preset {args.preset}:\n")
    print(format_table(args.preset))


if __name__ == "__main__":
    main()

"""Parameter counts per variant for a preset: ``python -m attnlab.params seed100m``."""

from __future__ import annotations

import argparse

import torch

from attnlab.config import PRESETS, ModelConfig
from attnlab.model import GPT
from variants import available_variants

PARTS = ("embedding", "attention", "mlp", "norms", "head")


def parameter_breakdown(config: ModelConfig) -> dict[str, int]:
    """Counts by part, plus ``total`` and ``extra_vs_baseline`` (what the variant adds)."""
    # The meta device allocates nothing, so even large presets are counted instantly.
    with torch.device("meta"):
        model = GPT(config)
        baseline = GPT(config.baseline_twin())
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
    rows = []
    for variant in available_variants():
        counts = parameter_breakdown(ModelConfig.from_preset(preset, variant=variant))
        rows.append([variant, *(f"{counts[k]:,}" for k in (*PARTS, "total", "extra_vs_baseline")),
                     f"{counts['total'] / 1e6:.2f}"])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("preset", nargs="?", default="seed100m", choices=sorted(PRESETS))
    args = parser.parse_args(argv)
    print(f"Parameters per variant, preset {args.preset}:\n")
    print(format_table(args.preset))


if __name__ == "__main__":
    main()

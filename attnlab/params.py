"""Parameter counts per variant for a preset: ``python -m attnlab.params seed100m``; a scaling
ladder's rungs, with training FLOPs per token: ``python -m attnlab.params --ladder cpu``."""

from __future__ import annotations

import argparse
import dataclasses

import torch

from attnlab.config import LADDERS, PRESETS, ModelConfig
from attnlab.model import GPT
from variants import available_variants, get_variant

PARTS = ("embedding", "attention", "mlp", "norms", "head")
MATCH_TOLERANCE = 0.005  # |variant - baseline| / baseline after matching
MATCH_MULTIPLES = (64, 32, 16, 8)  # MLP widths tried, coarsest first
MULTI_HEAD = 2  # heads for a variant that cannot use a one-head preset (variant_at_preset)


def baseline_twin(config: ModelConfig) -> ModelConfig:
    """``config`` with the ``baseline`` block: the variant's options dropped and its model-wide
    settings (``model_settings``) back at their defaults, so that the difference in parameters
    is what the variant adds (``gelu_bias``'s MLP biases included)."""
    defaults = {f.name: f.default for f in dataclasses.fields(ModelConfig)}
    reset = {key: defaults[key] for key in get_variant(config.variant).model_settings}
    return dataclasses.replace(config, variant="baseline", variant_options={}, matched_intermediate_size=None,
                               **reset)


def total_parameters(config: ModelConfig) -> int:
    with torch.device("meta"):  # shapes only, nothing allocated
        return sum(p.numel() for p in GPT(config).parameters())


def match_parameters(config: ModelConfig, tolerance: float = MATCH_TOLERANCE) -> ModelConfig:
    """``config`` with the MLP width that brings its total parameters within ``tolerance`` of
    its baseline twin's (``model.match_params=true``).

    The width is a multiple of 64, 32, 16 or 8 (the coarsest that reaches the tolerance, so
    the matmul shapes stay efficient); the current width is kept when it already matches. A
    variant that cannot be matched this way is refused, saying how close the best width gets.
    """
    target = total_parameters(baseline_twin(config))
    unmatched = dataclasses.replace(config, matched_intermediate_size=None)
    width = unmatched.intermediate_size
    at_width = total_parameters(unmatched)
    if abs(at_width - target) <= tolerance * target:
        return dataclasses.replace(config, matched_intermediate_size=width)
    per_unit = total_parameters(dataclasses.replace(unmatched, matched_intermediate_size=width + 1)) - at_width
    ideal = width + (target - at_width) / per_unit
    best = None
    for multiple in MATCH_MULTIPLES:
        candidate = max(multiple, round(ideal / multiple) * multiple)
        total = at_width + (candidate - width) * per_unit
        gap = abs(total - target) / target
        if best is None or gap < best[1]:
            best = (candidate, gap)
        if gap <= tolerance:
            return dataclasses.replace(config, matched_intermediate_size=candidate)
    raise ValueError(
        f"model.match_params=true cannot match variant {config.variant!r} to baseline's {target:,} parameters "
        f"by the MLP width alone: it adds {at_width - target:+,} parameters, and the closest width "
        f"(intermediate_size={best[0]}) is {best[1]:.2%} away (allowed: {tolerance:.1%}); run it unmatched "
        f"(model.match_params=false) and read its parameter count beside the results")


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


def variant_at_preset(preset: str, variant: str) -> tuple[ModelConfig, str | None]:
    """``variant`` at ``preset``, or with ``MULTI_HEAD`` heads when it cannot use the preset's
    shape (``diff_attn`` and ``talking_heads`` at the one-head presets), and the reason why.
    The listing, the parameter table and the bench all describe such variants this way."""
    config = ModelConfig.from_preset(preset, variant=variant)
    reason = get_variant(variant).unsupported(config)
    if reason is None:
        return config, None
    return ModelConfig.from_preset(preset, variant=variant, n_head=MULTI_HEAD), reason


def format_table(preset: str) -> str:
    header = ["variant", *PARTS, "total", "extra_vs_baseline", "total (M)"]
    rows, notes = [], []
    for variant in available_variants():
        config, reason = variant_at_preset(preset, variant)
        if reason is not None:
            notes.append(f"{variant}: counted with n_head={MULTI_HEAD} ({reason})")
        counts = parameter_breakdown(config)
        rows.append([variant, *(f"{counts[k]:,}" for k in (*PARTS, "total", "extra_vs_baseline")),
                     f"{counts['total'] / 1e6:.2f}"])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    lines += [""] * bool(notes) + [f"- {note}" for note in notes]
    return "\n".join(lines)


def format_ladder(ladder: str, seq_len: int) -> str:
    """Each rung of ``ladder`` (baseline block): shape, total and non-embedding parameters, and
    training FLOPs per token at ``seq_len`` (attnlab.flops: attention included)."""
    from attnlab.flops import flops_per_token

    header = ["rung", "n_layer", "n_embd", "n_head", "mlp", "total", "non-embedding", f"MFLOP/token (T={seq_len})"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for rung in LADDERS[ladder]:
        config = ModelConfig.from_preset(rung)
        counts = parameter_breakdown(config)
        cells = [rung, config.n_layer, config.n_embd, config.n_head, config.intermediate_size,
                 f"{counts['total']:,}", f"{counts['total'] - counts['embedding'] - counts['head']:,}",
                 f"{flops_per_token(config, min(seq_len, config.block_size)) / 1e6:.2f}"]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("preset", nargs="?", default="seed100m", choices=sorted(PRESETS))
    parser.add_argument("--ladder", choices=sorted(LADDERS), help="list a scaling ladder's rungs instead")
    parser.add_argument("--seq-len", type=int, default=None,
                        help="sequence length for --ladder's FLOPs (default: 128 cpu, 2048 gpu)")
    args = parser.parse_args(argv)
    if args.ladder:
        seq_len = args.seq_len or (128 if args.ladder == "cpu" else 2048)
        print(f"Ladder {args.ladder!r} (baseline; variants: python -m attnlab.params <rung>):\n")
        print(format_ladder(args.ladder, seq_len))
        return
    print(f"Parameters per variant, preset {args.preset}:\n")
    print(format_table(args.preset))


if __name__ == "__main__":
    main()

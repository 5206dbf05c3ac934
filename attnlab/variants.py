"""The variant listing: ``python -m attnlab.variants [--preset NAME]``.

Every row is derived from the registry and the variants' own declarations (docstring,
``paper``, ``Options``, ``attention_spec``, ``kernels``, ``unsupported``,
``weights_are_distributions``, ``supports_kv_cache``) and from counting parameters at the
preset; nothing in it is written by hand.
"""

from __future__ import annotations

import argparse
import dataclasses

from attnlab.attention import choose_kernel
from attnlab.config import PRESETS, ModelConfig
from attnlab.params import MULTI_HEAD, baseline_twin, match_parameters, total_parameters, variant_at_preset
from variants import AttentionBlock, available_variants, get_variant
from variants.registry import option_fields

COLUMNS = ["variant", "summary", "paper", "options (default)", "extra params", "matched MLP width",
           "trains on CPU", "trains on CUDA", "analysis weights", "head layouts", "KV cache"]


@dataclasses.dataclass(frozen=True)
class Listing:
    rows: list[dict[str, str]]
    notes: list[str]


def summary_line(block: type[AttentionBlock]) -> str:
    return (block.__doc__ or "").strip().splitlines()[0] if block.__doc__ else ""


def training_kernel(block: type[AttentionBlock], config: ModelConfig, device_type: str) -> str:
    """The kernel ``model.attn_kernel=auto`` trains ``block`` on, on this kind of device."""
    if block.kernels is not None:
        return block.kernels[0]
    return choose_kernel(block.attention_spec(config), device_type, block.attention_head_sizes(config))


def head_layouts(block: type[AttentionBlock], config: ModelConfig) -> str:
    """Which of MHA, GQA and MQA the variant accepts (asked of ``unsupported`` on a 4-head probe)."""
    probes = {"MHA": (4, 4), "GQA": (4, 2), "MQA": (4, 1)}
    ok = [name for name, (heads, groups) in probes.items()
          if block.unsupported(dataclasses.replace(config, n_head=heads, n_query_groups=groups)) is None]
    one_head = block.unsupported(dataclasses.replace(config, n_head=1, n_query_groups=1)) is None
    return ", ".join(ok) + ("" if one_head else "; not 1 head")


def list_variants(preset: str) -> Listing:
    rows, notes = [], []
    for name in available_variants():
        block = get_variant(name)
        config, reason = variant_at_preset(preset, name)
        if reason is not None:
            notes.append(f"{name}: counted with n_head={MULTI_HEAD} ({reason})")
        extra = total_parameters(config) - total_parameters(baseline_twin(config))
        try:
            matched = str(match_parameters(config).mlp_hidden_size)
        except ValueError as err:
            matched = "cannot match"
            notes.append(f"{name}: {err}")
        options = ", ".join(f"{key} ({default!r})" for key, (_, default) in option_fields(block).items())
        if block.attention_spec(config).window is not None:
            notes.append(f"{name}: a window of w is w keys, the query's own included (AttentionSpec.window)")
        rows.append({
            "variant": name, "summary": summary_line(block), "paper": block.paper,
            "options (default)": options or "-", "extra params": f"{extra:+,}",
            "matched MLP width": matched,
            "trains on CPU": training_kernel(block, config, "cpu"),
            "trains on CUDA": training_kernel(block, config, "cuda"),
            "analysis weights": "softmax rows (sum to 1)" if block.weights_are_distributions
            else "not a distribution (see docstring)",
            "head layouts": head_layouts(block, config),
            "KV cache": "yes" if block.supports_kv_cache else "no",
        })
    return Listing(rows, notes)


def format_listing(listing: Listing, preset: str) -> str:
    config = ModelConfig.from_preset(preset)
    lines = [f"Registered attention variants at preset {preset!r} (MLP width {config.intermediate_size}; "
             f"extra params vs baseline; matched width: model.match_params=true):", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row[c].replace("|", "/") for c in COLUMNS) + " |" for row in listing.rows]
    if listing.notes:
        lines += ["", *(f"- {note}" for note in listing.notes)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="List every registered attention variant.")
    parser.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    args = parser.parse_args(argv)
    print(format_listing(list_variants(args.preset), args.preset))


if __name__ == "__main__":
    main()

"""Generation samples of every variant for fixed prompts: greedy and sampled, one seed for all."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from attnlab.data.tokenizer import Tokenizer
from attnlab.generate import SamplingConfig, generate
from attnlab.model import GPT

# The study's prompt, and an English one for the other half of the bilingual corpus.
DEFAULT_PROMPTS = ("彼女が子供の頃に住んでいた、海の見える小さな町は、", "The small town by the sea where she grew up")
MODES = ("greedy", "sampled")


@dataclass
class Sample:
    variant: str
    seed: int  # the training seed of the run the model comes from
    checkpoint: str
    prompt: str
    mode: str  # "greedy" or "sampled"
    completion: str
    n_prompt_tokens: int
    n_new_tokens: int


def sample_model(model: GPT, tokenizer: Tokenizer, prompts: Sequence[str], sampling: SamplingConfig,
                 variant: str, seed: int, checkpoint: str) -> list[Sample]:
    """Greedy and sampled completions of every prompt; sampled ones use ``sampling.seed``."""
    samples = []
    for prompt in prompts:
        ids = tokenizer.encode(prompt, bos=True)  # as in training: every document starts with <s>
        for mode in MODES:
            cfg = dataclasses.replace(sampling, greedy=mode == "greedy")
            new = generate(model, ids, tokenizer.vocab_size, cfg, eos_id=tokenizer.eos_id)
            text = tokenizer.decode([i for i in new if i != tokenizer.eos_id])
            samples.append(Sample(variant, seed, checkpoint, prompt, mode, text, len(ids), len(new)))
    return samples


def write_samples(samples: Sequence[Sample], sampling: SamplingConfig, out_dir: Path) -> list[Path]:
    """``samples.json`` (every field) and ``samples.md`` (grouped by prompt, then mode)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = dataclasses.asdict(sampling)
    settings.pop("greedy")
    json_path, md_path = out_dir / "samples.json", out_dir / "samples.md"
    json_path.write_text(json.dumps({"sampling": settings, "samples": [dataclasses.asdict(s) for s in samples]},
                                    ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    lines = ["# Generation samples", "",
             "Greedy: argmax with the repetition penalty. Sampled: "
             + ", ".join(f"{k}={v}" for k, v in settings.items()) + " (the same seed for every variant).",
             "The prompt is shown in bold; models see it after `<s>`, as in training.", ""]
    for prompt in dict.fromkeys(s.prompt for s in samples):
        lines += [f"## {prompt}", ""]
        for mode in MODES:
            lines += [f"### {mode}", ""]
            for s in samples:
                if s.prompt == prompt and s.mode == mode:
                    text = (f"**{prompt}**{s.completion}").replace("\n", " ⏎ ")
                    lines += [f"- `{s.variant}` (seed {s.seed}, {s.checkpoint}.ckpt, "
                              f"{s.n_new_tokens} tokens): {text}"]
            lines.append("")
    md_path.write_text("\n".join(lines), encoding="utf-8")
    return [md_path, json_path]

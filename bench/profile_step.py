"""``torch.profiler`` table of training steps of one model, for when a throughput target is missed.

    python bench/profile_step.py --preset seed100m --seq-len 512 --batch-size 1 --model qk_scale
    python bench/profile_step.py --preset tiny --model hf_llama      # the transformers Llama

The step is the one ``bench/throughput.py`` times (same data pipeline, loss and AdamW).
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from attnlab.config import PRESETS, ModelConfig
from attnlab.model import build_model
from throughput import HF_NAME, PRECISIONS, Contestant, _HFLogits, hf_llama, random_token_batches
from variants import available_variants


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    p.add_argument("--seq-len", type=int, help="default: the preset's block size")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--model", choices=[*available_variants(), HF_NAME], default="baseline")
    p.add_argument("--steps", type=int, default=2, help="profiled steps, after one warm-up step")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", choices=PRECISIONS, default=None)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--sort", default=None, help="profiler sort key (default: self device time)")
    p.add_argument("--row-limit", type=int, default=30)
    p.add_argument("--shapes", action="store_true", help="group rows by input shapes too")
    args = p.parse_args(argv)

    device = torch.device(args.device)
    precision = args.precision or ("bf16-mixed" if device.type == "cuda" else "32-true")
    seq_len = args.seq_len or PRESETS[args.preset]["block_size"]
    if args.model == HF_NAME:
        model = _HFLogits(hf_llama(ModelConfig.from_preset(args.preset)))
    else:
        model = build_model(ModelConfig.from_preset(args.preset, variant=args.model))
    contestant = Contestant(args.model, model, device, precision, args.compile)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    vocab_size = ModelConfig.from_preset(args.preset).vocab_size
    with random_token_batches(vocab_size, seq_len, args.batch_size, args.steps + 1) as next_batch:
        contestant.step(*next_batch(device))
        with profile(activities=activities, record_shapes=args.shapes) as prof:
            for _ in range(args.steps):
                contestant.step(*next_batch(device))
            if device.type == "cuda":
                torch.cuda.synchronize(device)
    sort = args.sort or ("self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total")
    print(f"{args.model}: preset {args.preset}, T={seq_len}, batch {args.batch_size}, {precision}, "
          f"{args.steps} steps")
    print(prof.key_averages(group_by_input_shape=args.shapes).table(sort_by=sort,
                                                                    row_limit=args.row_limit))


if __name__ == "__main__":
    main()

"""Data pipeline speed on the demo corpus: tokenisation throughput and batch fetch latency.

    python bench/data_throughput.py                  # demo tokenizer (trained/reused under data/cache)
    python bench/data_throughput.py --step-ms 120    # also: share of a 120 ms step spent waiting for data

Tokenisation: sentencepiece batch encoding of every demo document, best of
``--repeats``, for 1 thread and all cores; MB/s counts UTF-8 bytes of input.
Batch latency: time per batch of a DataLoader over TokenWindowDataset
(shuffled, ``--batch-size`` x ``--seq-len``), after one warm-up epoch's worth of
batches, for each ``--workers`` setting. With workers the loader prefetches, so
the wait seen by a training step is at most this latency and usually near zero.
"""

from __future__ import annotations

import argparse
import json
import lzma
import os
import time

import torch
from torch.utils.data import DataLoader

from attnlab.data import DataConfig, TokenizerConfig, TokenWindowDataset, prepare_data
from attnlab.data.sources import DEMO_CORPUS


def tokenisation_throughput(tok, docs: list[str], threads: int, repeats: int) -> dict[str, float]:
    n_bytes = sum(len(d.encode("utf-8")) for d in docs)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        ids = tok.encode_batch(docs, num_threads=threads)
        best = min(best, time.perf_counter() - t0)
    n_tokens = sum(map(len, ids))
    return {"threads": threads, "seconds": best, "MB_per_s": n_bytes / best / 1e6, "tokens_per_s": n_tokens / best,
            "tokens": n_tokens, "bytes": n_bytes}


def batch_latency_us(dataset, batch_size: int, workers: int, n_batches: int) -> float:
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=workers,
                        generator=torch.Generator().manual_seed(0), persistent_workers=workers > 0)
    it = iter(loader)
    for _ in range(min(n_batches, 20)):  # warm-up: worker start, page cache
        next(it)
    done, t0 = 0, time.perf_counter()
    while done < n_batches:
        try:
            next(it)
        except StopIteration:
            it = iter(loader)
            continue
        done += 1
    return (time.perf_counter() - t0) / n_batches * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--vocab-size", type=int, default=8000)
    ap.add_argument("--model-type", default="unigram")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--batches", type=int, default=500)
    ap.add_argument("--step-ms", type=float, help="a training step's time, to report the data-wait share")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = ap.parse_args()

    prepared = prepare_data(DataConfig(tokenizer=TokenizerConfig(vocab_size=args.vocab_size,
                                                                 model_type=args.model_type)))
    tok = prepared.tokenizer()
    with lzma.open(DEMO_CORPUS, "rt", encoding="utf-8") as f:
        docs = [json.loads(line)["text"] for line in f]

    cores = os.cpu_count() or 1
    results = {"tokenizer": str(tok), "cores": cores, "tokenisation": [], "batch_latency_us": {}}
    for threads in sorted({1, cores}):
        results["tokenisation"].append(tokenisation_throughput(tok, docs, threads, args.repeats))
    dataset = TokenWindowDataset(prepared.train, args.seq_len)
    for workers in args.workers:
        results["batch_latency_us"][workers] = batch_latency_us(dataset, args.batch_size, workers, args.batches)

    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"{tok}  ({cores} cores)")
    print(f"demo corpus: {len(docs)} documents, {results['tokenisation'][0]['bytes'] / 1e6:.1f} MB UTF-8, "
          f"{results['tokenisation'][0]['tokens']} tokens")
    for r in results["tokenisation"]:
        print(f"tokenisation, {r['threads']:>2} thread(s): {r['MB_per_s']:6.1f} MB/s  "
              f"{r['tokens_per_s'] / 1e6:6.2f} M tokens/s")
    for workers, us in results["batch_latency_us"].items():
        line = f"batch {args.batch_size}x{args.seq_len}, {workers} worker(s): {us:8.1f} us/batch"
        if args.step_ms:
            # Without workers the fetch is serial with the step; with workers it overlaps
            # it, and this is the worst case (prefetch never ahead).
            line += f"   data wait <= {100 * us / (us + 1000 * args.step_ms):.2f}% of a {args.step_ms:g} ms step"
        print(line)


if __name__ == "__main__":
    main()

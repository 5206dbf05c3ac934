"""Validation loss by token position: how much each variant gains from context.

A run's validation split is rebuilt from its own ``config.yaml`` (``data`` section) by
``attnlab.data.prepare_data``, which finds the cache the run built (or rebuilds it from the
same source); the tokenizer it gives must be the run's own ``tokenizer.model``, or the run
is refused. ``n`` windows of the run's ``trainer.seq_len`` tokens, evenly spaced over the
split (the same windows for every run on the same data), go through the model; the
cross-entropy at each position (over the padded vocabulary, as the training loss) is
averaged over the windows. Windows are cut from packed documents, so position 0 is a
token predicted from one token of context, not necessarily a document start.
"""

from __future__ import annotations

import dataclasses
import json
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:
    from attnlab.model import GPT
    from attnlab.runs import RunDir


def validation_windows(run: RunDir, n_windows: int, cache: dict | None = None) -> tuple[Tensor, Tensor]:
    """(x, y), each (n, seq_len) int64: ``n_windows`` evenly spaced windows of the run's
    validation split (all of them if it has fewer). ``cache`` (a dict) shares the windows
    between runs trained on the same data and window length."""
    from attnlab.data import DataConfig, TokenWindowDataset, prepare_data

    config = run.load_config()
    known = {f.name for f in dataclasses.fields(DataConfig)}
    data = {k: v for k, v in (config.get("data") or {}).items() if k in known}
    seq_len = int(config["trainer"]["seq_len"])
    key = json.dumps([data, seq_len, n_windows], sort_keys=True, default=str)
    if cache is not None and key in cache:
        prepared, windows = cache[key]
    else:
        prepared = prepare_data(DataConfig(**data))
        dataset = TokenWindowDataset(prepared.val, seq_len)
        index = np.unique(np.linspace(0, len(dataset) - 1, min(n_windows, len(dataset))).round().astype(int))
        pairs = dataset.__getitems__(index.tolist())
        windows = torch.stack([x for x, _ in pairs]), torch.stack([y for _, y in pairs])
        if cache is not None:
            cache[key] = prepared, windows
    tokenizer_sha = run.load_tokenizer().sha256
    if prepared.tokenizer_sha256 != tokenizer_sha:
        raise ValueError(f"the run's data configuration now gives another tokenizer (sha256 "
                         f"{prepared.tokenizer_sha256[:12]}, the run's tokenizer.model {tokenizer_sha[:12]})")
    return windows


def loss_by_position(model: GPT, x: Tensor, y: Tensor, batch_size: int = 16) -> np.ndarray:
    """Mean cross-entropy (nats) at each of the T positions over the windows (n, T): (T,)."""
    device = model.wte.weight.device
    total = torch.zeros(x.shape[1], dtype=torch.float64)
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            xb, yb = x[start:start + batch_size].to(device), y[start:start + batch_size].to(device)
            logits = model(xb).float()
            ce = F.cross_entropy(logits.flatten(0, 1), yb.flatten(), reduction="none").view_as(yb)
            total += ce.double().sum(0).cpu()
    return (total / len(x)).numpy()

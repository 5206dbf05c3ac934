"""Reading Lightning checkpoints back into plain models, with clear errors for bad files."""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from attnlab.config import RUNTIME_SETTINGS, ModelConfig
from attnlab.model import GPT


def is_checkpoint(path: str | Path) -> bool:
    """A checkpoint file, or the directory of a sharded one (``trainer=fsdp``: one file per rank
    and torch.distributed.checkpoint's ``.metadata``)."""
    path = Path(path)
    return path.is_file() or (path / ".metadata").is_file()


def _load(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not is_checkpoint(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        if path.is_dir():  # sharded: the shards consolidated into one state dict, in this process
            from lightning.fabric.utilities.load import _load_distributed_checkpoint

            checkpoint = _load_distributed_checkpoint(path)
        else:
            checkpoint = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as err:
        raise ValueError(f"{path} is not a readable checkpoint (truncated or not a torch file): "
                         f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from None
    if not isinstance(checkpoint, dict) or "model_config" not in checkpoint.get("hyper_parameters", {}):
        raise ValueError(f"{path} is not an attnlab training checkpoint (no model_config in it)")
    return checkpoint


def load_checkpoint_config(path: str | Path) -> dict[str, Any]:
    """The ``ModelConfig`` settings a checkpoint was trained with."""
    return dict(_load(path)["hyper_parameters"]["model_config"])


# What a mismatch is called, by what the checkpoint is compared with.
_MISMATCH = {"requested": "was trained with a different model",
             "run": "does not match its run directory"}


def check_checkpoint_matches(path: str | Path, expected: ModelConfig | Mapping[str, Any],
                             against: str = "requested") -> None:
    """Refuse a checkpoint of another variant or shape before it is loaded or analysed.

    ``expected`` is the model about to be trained (``against="requested"``: resume) or the
    ``resolved_model`` of the run directory it sits in (``against="run"``: evaluation).
    Runtime settings (``RUNTIME_SETTINGS``, e.g. ``attn_kernel``) say how a model is
    computed, not what it is: a checkpoint resumed or evaluated under others still matches.
    """
    saved = load_checkpoint_config(path)
    expected = expected.to_dict() if isinstance(expected, ModelConfig) else expected
    diffs = {k: (saved.get(k), v) for k, v in expected.items()
             if k not in RUNTIME_SETTINGS and saved.get(k) != v}
    if diffs:
        details = ", ".join(f"{k}: checkpoint {a!r} vs {against} {b!r}" for k, (a, b) in diffs.items())
        raise ValueError(f"checkpoint {path} {_MISMATCH[against]} ({details})")


def checkpoint_step(path: str | Path) -> int:
    """The optimizer step at which a checkpoint was written."""
    return int(_load(path)["global_step"])


def load_model(path: str | Path, expect_variant: str | None = None, attn_kernel: str = "auto") -> GPT:
    """A ``GPT`` with the checkpoint's weights, in eval mode on the CPU.

    ``attn_kernel`` replaces the one it was trained with (a run trained with ``flex`` on
    a GPU is evaluated on the CPU, where ``auto`` picks the fastest kernel that can run the
    variant there; outputs agree).
    """
    checkpoint = _load(path)
    config = ModelConfig(**{**checkpoint["hyper_parameters"]["model_config"], "attn_kernel": attn_kernel})
    if expect_variant is not None and config.variant != expect_variant:
        raise ValueError(f"checkpoint {path} holds variant {config.variant!r}, "
                         f"but {expect_variant!r} was expected")
    model = GPT(config)
    state = {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items()
             if k.startswith("model.")}
    state = {k.replace("_orig_mod.", ""): v for k, v in state.items()}
    model.load_state_dict(state)
    return model.eval()

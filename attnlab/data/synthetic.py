"""Synthetic tasks as data sources, generated from the seed (no files, no tokenizer).

``data=mqar``: multi-query associative recall (Arora et al. 2023, "Zoology: Measuring and
Improving Recall in Efficient Language Models")::

    k1 v1 k2 v2 ... kN vN | f f k2 v2 f k7 v7 f f ...      (f: filler; the scored targets: v2, v7, ...)

``data=induction``: a segment of distinct random tokens followed by its copy, among random
tokens (Olsson et al. 2022, "In-context Learning and Induction Heads")::

    r r r s1 s2 ... sL s1 s2 ... sL r r                    (scored targets: the copy's s2 ... sL)

Example ``i`` of a split is a pure function of (seed, split, i): its numbers come from a
generator seeded with ``SeedSequence(seed, spawn_key=(split, i))``, so train and val draw from
disjoint streams, any batch can be rebuilt on its own (a resumed run continues the same
stream) and every variant sees the same examples in the same order. Targets that are not
scored are ``IGNORE_INDEX`` (-100), which ``F.cross_entropy`` and the accuracy metric skip:
loss and accuracy count the answer positions only. The sequence length is ``trainer.seq_len``.
"""

from __future__ import annotations

import abc
import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from attnlab.data.config import SYNTHETIC_SOURCES, DataConfig, DataError, InductionConfig, MQARConfig

IGNORE_INDEX = -100  # F.cross_entropy's default ignore_index
SPLITS = ("train", "val")
# Examples per "epoch": only a reporting unit for the progress bar and the sampler; epoch e
# continues the stream at example e * EXAMPLES_PER_EPOCH, so no example is ever repeated.
EXAMPLES_PER_EPOCH = 2**20


@dataclass(frozen=True)
class SyntheticTask(abc.ABC):
    """A task's options; ``sequence`` draws one example, ``dataset`` one split's stream.
    ``MQARTask`` and ``InductionTask`` implement the three abstract members."""

    source = "synthetic"
    options: MQARConfig | InductionConfig
    split_seed: int = 0  # seeds the validation stream: the same val examples for every training seed

    @staticmethod
    def from_config(cfg: DataConfig) -> SyntheticTask:
        if cfg.source not in SYNTHETIC_SOURCES:
            raise DataError(f"data.source={cfg.source!r} is not a synthetic task; allowed: "
                            f"{', '.join(SYNTHETIC_SOURCES)}")
        task = {"mqar": MQARTask, "induction": InductionTask}[cfg.source]
        return task(getattr(cfg, cfg.source), cfg.split_seed)

    @property
    def vocab_size(self) -> int:
        return self.options.vocab_size

    @property
    def description(self) -> str:
        return f"{self.source}(" + ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(self.options).items()) + ")"

    def settings(self) -> dict:
        """For summary.json: the task, its options and the accuracy of guessing."""
        return {"task": self.source, **dataclasses.asdict(self.options), "chance_acc": self.chance_acc}

    @property
    @abc.abstractmethod
    def chance_acc(self) -> float:
        """The accuracy of guessing (what the task's tables are read against)."""

    @abc.abstractmethod
    def check_seq_len(self, seq_len: int) -> None:
        """Raise a DataError naming the setting, its value and the allowed range if the
        options do not fit sequences of ``seq_len`` (+1 for the last target)."""

    @abc.abstractmethod
    def sequence(self, rng: np.random.Generator, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
        """``seq_len + 1`` tokens (int64) and the (seq_len,) mask of scored targets:
        ``scored[t]`` says whether token ``t + 1`` (the target at position t) is scored."""

    def example(self, seed: int, split: str, index: int, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
        """Example ``index`` of ``split``'s stream under ``seed``: a pure function of them."""
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
        entropy = seed & (2**64 - 1)  # SeedSequence takes non-negative ints (data.split_seed may be negative)
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(entropy, spawn_key=(SPLITS.index(split),
                                                                                            index))))
        return self.sequence(rng, seq_len)

    def dataset(self, split: str, seed: int, seq_len: int) -> SyntheticDataset:
        return SyntheticDataset(self, split, seed, seq_len)


class MQARTask(SyntheticTask):
    """Keys come from the first half of the vocabulary, values and filler from the second, so
    every key in the query region is a query; keys and values are distinct within a sequence."""

    source = "mqar"

    @property
    def num_queries(self) -> int:
        return self.options.num_queries or self.options.num_pairs

    @property
    def chance_acc(self) -> float:
        return 1 / self.options.num_pairs  # one of the values in the context, without the binding

    def check_seq_len(self, seq_len: int) -> None:
        n, q = self.options.num_pairs, self.num_queries
        if 2 * n + 2 * q > seq_len + 1:
            raise DataError(f"data.mqar.num_pairs={n} with num_queries={q} needs trainer.seq_len >= "
                            f"{2 * n + 2 * q - 1} (2 tokens per pair and per query, minus 1); got "
                            f"trainer.seq_len={seq_len}, which allows data.mqar.num_pairs in "
                            f"[1, {(seq_len + 1) // 4}] with num_queries=null")

    def sequence(self, rng: np.random.Generator, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
        n, q, vocab = self.options.num_pairs, self.num_queries, self.options.vocab_size
        half = vocab // 2
        keys = rng.choice(half, n, replace=False)
        values = half + rng.choice(vocab - half, n, replace=False)
        tokens = half + rng.integers(0, vocab - half, seq_len + 1)  # filler: never a key
        tokens[0:2 * n:2], tokens[1:2 * n:2] = keys, values
        # Query slots are token pairs after the context: the key, then its value.
        at = 2 * n + 2 * rng.choice((seq_len + 1 - 2 * n) // 2, q, replace=False)
        asked = rng.choice(n, q, replace=False)
        tokens[at], tokens[at + 1] = keys[asked], values[asked]
        scored = np.zeros(seq_len, dtype=bool)
        scored[at] = True  # the target at the key's position is its value
        return tokens, scored


class InductionTask(SyntheticTask):
    """The segment's tokens are distinct, so the earlier occurrence of each is unique: the
    token after it is the answer (the copy's first token is not scored: nothing predicts it)."""

    source = "induction"

    def segment_len(self, seq_len: int) -> int:
        return self.options.segment_len or min((seq_len + 1) // 2, self.options.vocab_size)

    @property
    def chance_acc(self) -> float:
        return 1 / self.options.vocab_size

    def check_seq_len(self, seq_len: int) -> None:
        length = self.segment_len(seq_len)
        if length < 2:
            raise DataError(f"trainer.seq_len={seq_len} is too short for data=induction: a segment of 2 "
                            f"tokens and its copy need trainer.seq_len >= 3")
        if 2 * length > seq_len + 1:
            raise DataError(f"data.induction.segment_len={length} needs trainer.seq_len >= {2 * length - 1} "
                            f"(the segment and its copy, minus 1); got trainer.seq_len={seq_len}, which "
                            f"allows data.induction.segment_len in [2, {(seq_len + 1) // 2}]")

    def sequence(self, rng: np.random.Generator, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
        length, vocab = self.segment_len(seq_len), self.options.vocab_size
        tokens = rng.integers(0, vocab, seq_len + 1)
        segment = rng.choice(vocab, length, replace=False)
        start = int(rng.integers(0, seq_len + 2 - 2 * length))
        copy = start + length
        tokens[start:copy], tokens[copy:copy + length] = segment, segment
        scored = np.zeros(seq_len, dtype=bool)
        scored[copy:copy + length - 1] = True  # targets: the copy's tokens 2..L
        return tokens, scored


class SyntheticDataset(Dataset):
    """One split's stream: item ``i`` is ``(x, y)``, int64 of ``seq_len``, ``y`` = x shifted by
    one with ``IGNORE_INDEX`` where not scored. Every index >= 0 is an example; ``len`` is
    ``EXAMPLES_PER_EPOCH`` (the sampler's unit, see ``attnlab.training.datamodule``)."""

    def __init__(self, task: SyntheticTask, split: str, seed: int, seq_len: int) -> None:
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
        task.check_seq_len(seq_len)
        self.task, self.split, self.seed, self.seq_len = task, split, seed, seq_len
        self.vocab_size = task.vocab_size

    def __len__(self) -> int:
        return EXAMPLES_PER_EPOCH

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.__getitems__([i])[0]

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """A whole batch in one conversion; DataLoader calls this instead of __getitem__."""
        if any(i < 0 for i in indices):
            raise IndexError(f"example indices of a stream are >= 0, got {min(indices)}")
        examples = [self.task.example(self.seed, self.split, i, self.seq_len) for i in indices]
        tokens = torch.from_numpy(np.stack([tokens for tokens, _ in examples]))
        scored = torch.from_numpy(np.stack([scored for _, scored in examples]))
        x, y = tokens[:, :-1], tokens[:, 1:].masked_fill(~scored, IGNORE_INDEX)
        return list(zip(x.unbind(0), y.unbind(0)))

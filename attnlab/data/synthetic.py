"""Synthetic tasks as data sources, generated from the seed (no files, no tokenizer).

``data=mqar``: multi-query associative recall (Arora et al. 2023, "Zoology: Measuring and
Improving Recall in Efficient Language Models")::

    k1 v1 k2 v2 ... kN vN | f f k2 v2 f k7 v7 f f ...      (f: filler; the scored targets: v2, v7, ...)

``data=induction``: a segment of distinct random tokens followed by its copy, among random
tokens (Olsson et al. 2022, "In-context Learning and Induction Heads")::

    r r r s1 s2 ... sL s1 s2 ... sL r r                    (scored targets: the copy's s2 ... sL)

The six MAD tasks (Poli et al. 2024, "Mechanistic Design and Scaling of Hybrid Architectures";
defaults are MAD's baselines). ``_`` marks an input that hides an answer (the blank, compression
or insert token), so the model cannot read back what it is asked to produce:

    icr             k1 v1 k2 v2 k1 v1 k3 v3 k2 v2           (a value whose key came before: v1, v2)
    noisy_icr       k1 v1 n n k2 v2 n n k1 v1               (n n: noise pairs, never scored)
    fuzzy_icr       p p k1 k1' v1 k2 v2 v2' k1 k1' v1       (keys, values: runs of 1..key_len/value_len)
    selective_copy  b s1 b b s2 s3 b C s1 _ _               (C: copy token; scored: s1 s2 s3 in order)
    compression     r1 r2 r3 C r1 _ _                       (C: compression token; scored: r1 r2 r3)
    memorization    k1 _ k2 _ k3 _                          (scored: map[k] at each _; a fixed map)

The MAD tasks' vocabularies are split as MAD splits them: keys in the first half of the non-special
tokens, values in the second, then noise tokens, then the special tokens (pad, blank, copy,
compression, insert) as the last ids. ``data.num_train_examples`` makes any task's training
set finite: training example i is example i mod n.

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
import functools
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from attnlab.data.config import (SYNTHETIC_SOURCES, CompressionConfig, DataConfig, DataError, FuzzyICRConfig,
                                 ICRConfig, InductionConfig, MemorizationConfig, MQARConfig, NoisyICRConfig,
                                 SelectiveCopyConfig)

IGNORE_INDEX = -100  # F.cross_entropy's default ignore_index
SPLITS = ("train", "val")
# Examples per "epoch": only a reporting unit for the progress bar and the sampler; epoch e
# continues the stream at example e * EXAMPLES_PER_EPOCH, so no example is ever repeated.
EXAMPLES_PER_EPOCH = 2**20
TaskOptions = (MQARConfig | InductionConfig | ICRConfig | NoisyICRConfig | FuzzyICRConfig | SelectiveCopyConfig
               | CompressionConfig | MemorizationConfig)


@dataclass(frozen=True)
class SyntheticTask(abc.ABC):
    """A task's options; ``sequence`` draws one example, ``dataset`` one split's stream.
    Each task (``MQARTask``, ``InductionTask``, the MAD tasks) implements the three abstract members."""

    source = "synthetic"
    options: TaskOptions
    split_seed: int = 0  # seeds the validation stream: the same val examples for every training seed
    num_train_examples: int | None = None  # None: an endless training stream; n: example i mod n

    @staticmethod
    def from_config(cfg: DataConfig) -> SyntheticTask:
        if cfg.source not in SYNTHETIC_SOURCES:
            raise DataError(f"data.source={cfg.source!r} is not a synthetic task; allowed: "
                            f"{', '.join(SYNTHETIC_SOURCES)}")
        task = {t.source: t for t in TASKS}[cfg.source]
        return task(getattr(cfg, cfg.source), cfg.split_seed, cfg.num_train_examples)

    @property
    def vocab_size(self) -> int:
        return self.options.vocab_size

    @property
    def answer_input(self) -> int | None:
        """The token that replaces each scored answer where it would be the next input (None:
        answers are inputs too, as in text); see ``SyntheticDataset``."""
        return None

    @property
    def description(self) -> str:
        options = dataclasses.asdict(self.options)
        if self.num_train_examples is not None:
            options["num_train_examples"] = self.num_train_examples
        return f"{self.source}(" + ", ".join(f"{k}={v}" for k, v in options.items()) + ")"

    def settings(self) -> dict:
        """For summary.json: the task, its options, the training set's size and the accuracy of guessing."""
        return {"task": self.source, **dataclasses.asdict(self.options),
                "num_train_examples": self.num_train_examples, "chance_acc": self.chance_acc}

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
        if split == "train" and self.num_train_examples is not None:
            index %= self.num_train_examples  # a finite training set, cycled in stream order
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


def _recall_pairs(rng: np.random.Generator, seq_len: int, n_symbols: int, noise: tuple[int, int] | None,
                  frac_noise: float) -> tuple[np.ndarray, np.ndarray]:
    """In-context recall over ``n_symbols`` key and value tokens (keys the first half), with
    pair slots of noise tokens in [noise[0], noise[1]) at rate ``frac_noise``."""
    n_keys = n_symbols // 2
    pairs = (seq_len + 1) // 2
    value_of = rng.integers(n_keys, n_symbols, n_keys)  # this sequence's map; values may repeat
    keys = rng.integers(0, n_keys, pairs)
    is_noise = rng.random(pairs) < frac_noise
    is_noise[rng.integers(pairs - 1)] = is_noise[-1] = False  # some pair to ask, and the last pair asks
    keys[-1] = rng.choice(keys[:-1][~is_noise[:-1]])
    tokens = rng.integers(0, n_keys, seq_len + 1)  # an odd window's last token: a key without its value
    tokens[0:2 * pairs:2], tokens[1:2 * pairs:2] = keys, value_of[keys]
    scored = np.zeros(seq_len, dtype=bool)
    seen = set()
    for j in np.flatnonzero(~is_noise).tolist():
        scored[2 * j] = keys[j] in seen  # the target at the key's position is its value
        seen.add(keys[j])
    if noise is not None:
        slots = np.flatnonzero(is_noise)
        tokens[2 * slots], tokens[2 * slots + 1] = (rng.integers(*noise, len(slots)) for _ in range(2))
    return tokens, scored


class ICRTask(SyntheticTask):
    """In-context recall, MAD's multi-query form: every pair whose key came before is a query::

        k1 v1 k2 v2 k1 v1 k3 v3 k2 v2                           (scored targets: the repeats' v1, v2)

    Keys are tokens [0, V/2), values [V/2, V); each key has one value within a sequence (drawn per
    sequence; two keys may share one). The last pair repeats an earlier key, so every sequence
    has an answer; an odd window ends with a lone key. Chance: 1 / the number of value tokens."""

    source = "icr"

    @property
    def chance_acc(self) -> float:
        return 1 / (self.options.vocab_size - self.options.vocab_size // 2)

    def check_seq_len(self, seq_len: int) -> None:
        if seq_len < 3:
            raise DataError(f"trainer.seq_len={seq_len} is too short for data={self.source}: a pair and "
                            f"its repeat need trainer.seq_len >= 3")

    def sequence(self, rng: np.random.Generator, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
        return _recall_pairs(rng, seq_len, self.options.vocab_size, None, 0.0)


class NoisyICRTask(ICRTask):
    """In-context recall with noise: each pair slot but the last and one more is, with
    probability ``frac_noise``, two random noise tokens (never scored)::

        k1 v1 n n k2 v2 n n k1 v1                               (scored: the repeat's v1)

    Keys [0, S/2), values [S/2, S), noise [S, V) where S = V - noise_vocab_size (MAD's layout).
    Chance: 1 / the number of value tokens."""

    source = "noisy_icr"

    @property
    def n_symbols(self) -> int:
        return self.options.vocab_size - self.options.noise_vocab_size

    @property
    def chance_acc(self) -> float:
        return 1 / (self.n_symbols - self.n_symbols // 2)

    def sequence(self, rng: np.random.Generator, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
        return _recall_pairs(rng, seq_len, self.n_symbols, (self.n_symbols, self.options.vocab_size),
                             self.options.frac_noise)


class FuzzyICRTask(SyntheticTask):
    """Fuzzy in-context recall: keys are runs of 1..key_len distinct key tokens, values runs of
    1..value_len distinct value tokens (lengths drawn per pair), so where a key ends must be read
    from the context; every token of a value whose key came before is scored::

        p p k1 k1' v1 k2 v2 v2' k1 k1' v1                       (scored: the repeat's v1; p: pad)

    Pairs fill the window from the left until the next might not fit, the last pair repeats an
    earlier one, and pad tokens fill the start. Keys [0, S/2), values [S/2, S), pad V - 1 where
    S = V - 1. MAD's test split asks only keys of key_len tokens; here both splits are drawn
    alike. Chance: 1 / the number of value tokens."""

    source = "fuzzy_icr"

    @property
    def chance_acc(self) -> float:
        n = self.options.vocab_size - 1
        return 1 / (n - n // 2)

    def check_seq_len(self, seq_len: int) -> None:
        longest = self.options.key_len + self.options.value_len
        if 2 * longest > seq_len + 1:
            raise DataError(f"data.fuzzy_icr.key_len={self.options.key_len} with value_len="
                            f"{self.options.value_len} needs trainer.seq_len >= {2 * longest - 1} (a longest "
                            f"pair and its repeat, minus 1); got trainer.seq_len={seq_len}")

    def sequence(self, rng: np.random.Generator, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
        key_len, value_len, vocab = self.options.key_len, self.options.value_len, self.options.vocab_size
        n_keys, n_symbols = (vocab - 1) // 2, vocab - 1
        budget = seq_len + 1 - key_len - value_len  # room left for the last pair, however long
        value_of: dict[tuple[int, ...], tuple[int, ...]] = {}
        pairs: list[tuple[tuple[int, ...], tuple[int, ...], bool]] = []  # key, value, asked (key seen before)
        length = 0
        while True:
            key = tuple(rng.choice(n_keys, int(rng.integers(1, key_len + 1)), replace=False).tolist())
            value = value_of.get(key) or tuple(
                (n_keys + rng.choice(n_symbols - n_keys, int(rng.integers(1, value_len + 1)), replace=False)).tolist())
            if length + len(key) + len(value) > budget:
                break
            pairs.append((key, value, key in value_of))
            value_of[key] = value
            length += len(key) + len(value)
        key, value, _ = pairs[rng.integers(len(pairs))]
        pairs.append((key, value, True))
        tokens = [vocab - 1] * (seq_len + 1 - length - len(key) - len(value))  # pad at the start
        scored = np.zeros(seq_len, dtype=bool)
        for key, value, asked in pairs:
            tokens += key
            scored[len(tokens) - 1:len(tokens) - 1 + len(value)] = asked  # targets: the value's tokens
            tokens += value
        return np.array(tokens, dtype=np.int64), scored


class SelectiveCopyTask(SyntheticTask):
    """Selective copying: num_tokens_to_copy data tokens at random places among blanks, then the
    copy token, then the data tokens in order; the inputs after the copy token are blanks (as in
    MAD), so the model must keep its place rather than read back the previous answer::

        b s1 b b s2 s3 b C s1 _ _                                (scored: s1 s2 s3; _: a blank input)

    Data tokens [0, V - 2), drawn with replacement; blank V - 2, copy V - 1. The region before the
    copy token is trainer.seq_len - num_tokens_to_copy tokens long. Chance: 1 / (V - 2)."""

    source = "selective_copy"

    @property
    def answer_input(self) -> int:
        return self.options.vocab_size - 2

    @property
    def chance_acc(self) -> float:
        return 1 / (self.options.vocab_size - 2)

    def check_seq_len(self, seq_len: int) -> None:
        n = self.options.num_tokens_to_copy
        if 2 * n > seq_len:
            raise DataError(f"data.selective_copy.num_tokens_to_copy={n} needs trainer.seq_len >= {2 * n} "
                            f"(the tokens among blanks, then their copy); got trainer.seq_len={seq_len}, which "
                            f"allows data.selective_copy.num_tokens_to_copy in [1, {seq_len // 2}]")

    def sequence(self, rng: np.random.Generator, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
        n, vocab = self.options.num_tokens_to_copy, self.options.vocab_size
        region = seq_len - n
        data = rng.integers(0, vocab - 2, n)
        tokens = np.full(seq_len + 1, vocab - 2, dtype=np.int64)
        tokens[np.sort(rng.choice(region, n, replace=False))] = data
        tokens[region], tokens[region + 1:] = vocab - 1, data
        scored = np.zeros(seq_len, dtype=bool)
        scored[region:] = True  # from the copy token's position on, the targets are s1 ... sN
        return tokens, scored


class CompressionTask(SyntheticTask):
    """Compression: trainer.seq_len // 2 random tokens, the compression token, then the same tokens
    with the compression token as every input meanwhile::

        r1 r2 r3 C r1 _ _                                        (scored: r1 r2 r3; _: C as input)

    MAD trains an encoder-decoder that must squeeze the sequence into the compression token's
    state; in a causal LM the decoder half is the same model, which may attend back to the tokens,
    so this is recall by position. Data tokens [0, V - 1), compression token V - 1; an odd window
    ends with one more compression token. Chance: 1 / (V - 1)."""

    source = "compression"

    @property
    def answer_input(self) -> int:
        return self.options.vocab_size - 1

    @property
    def chance_acc(self) -> float:
        return 1 / (self.options.vocab_size - 1)

    def check_seq_len(self, seq_len: int) -> None:
        if seq_len < 2:
            raise DataError(f"trainer.seq_len={seq_len} is too short for data=compression: a token, the "
                            f"compression token and the token again need trainer.seq_len >= 2")

    def sequence(self, rng: np.random.Generator, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
        n, vocab = seq_len // 2, self.options.vocab_size
        tokens = np.full(seq_len + 1, vocab - 1, dtype=np.int64)
        tokens[:n] = tokens[n + 1:2 * n + 1] = rng.integers(0, vocab - 1, n)
        scored = np.zeros(seq_len, dtype=bool)
        scored[n:2 * n] = True
        return tokens, scored


class MemorizationTask(SyntheticTask):
    """Memorization: keys drawn with replacement, each followed by the insert token as input; the
    target there is the key's value under a fixed map (drawn from ``map_seed``: the same facts in
    every sequence, split and training seed), never shown in the input::

        k1 _ k2 _ k3 _                                           (scored: map[k1] map[k2] map[k3])

    Keys [0, S/2), values [S/2, S) where S = V - 1, insert token V - 1; the map sends the keys to
    distinct values (MAD's), (V - 1) // 2 facts. An odd window ends with a key whose value falls
    outside it. Chance: 1 / the number of value tokens."""

    source = "memorization"

    @property
    def answer_input(self) -> int:
        return self.options.vocab_size - 1

    @functools.cached_property
    def value_map(self) -> np.ndarray:
        """``value_map[k]``: key k's value; a function of vocab_size and map_seed only."""
        n_symbols = self.options.vocab_size - 1
        n_keys = n_symbols // 2
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(self.options.map_seed & (2**64 - 1))))
        return n_keys + rng.permutation(n_symbols - n_keys)[:n_keys]

    @property
    def chance_acc(self) -> float:
        n_symbols = self.options.vocab_size - 1
        return 1 / (n_symbols - n_symbols // 2)

    def check_seq_len(self, seq_len: int) -> None:
        if seq_len < 1:
            raise DataError(f"trainer.seq_len={seq_len} must be >= 1 for data=memorization")

    def sequence(self, rng: np.random.Generator, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
        pairs = (seq_len + 1) // 2
        tokens = rng.integers(0, len(self.value_map), seq_len + 1)
        keys = tokens[0:2 * pairs:2]
        tokens[1:2 * pairs:2] = self.value_map[keys]
        scored = np.zeros(seq_len, dtype=bool)
        scored[0:2 * pairs:2] = True
        return tokens, scored


TASKS = (MQARTask, InductionTask, ICRTask, FuzzyICRTask, NoisyICRTask, SelectiveCopyTask, CompressionTask,
         MemorizationTask)


class SyntheticDataset(Dataset):
    """One split's stream: item ``i`` is ``(x, y)``, int64 of ``seq_len``, ``y`` = x shifted by
    one with ``IGNORE_INDEX`` where not scored (and, for a task with an ``answer_input``, that
    token in ``x`` where an answer would be the input). Every index >= 0 is an example; ``len`` is
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
        if self.task.answer_input is not None:  # input t + 1 is the answer of target t: hide it
            hidden = torch.zeros_like(scored)
            hidden[:, 1:] = scored[:, :-1]
            x = x.masked_fill(hidden, self.task.answer_input)
        return list(zip(x.unbind(0), y.unbind(0)))

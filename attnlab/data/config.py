"""Typed configuration of the data pipeline: where the text comes from and how it is tokenised.

Every dataclass validates itself once in ``__post_init__`` so that a typo in
a Hydra override fails with one line naming the bad value and the allowed ones.
``Optional[...]`` rather than ``X | None`` because OmegaConf builds its schema
from these annotations.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Optional

SYNTHETIC_SOURCES = ("mqar", "induction")  # generated from the seed (attnlab/data/synthetic.py): no files
SOURCES = ("demo", "text", "hf", *SYNTHETIC_SOURCES)
MODEL_TYPES = ("unigram", "bpe")
DECODE_ERROR_MODES = ("fail", "replace")
# 256 byte-fallback pieces + <unk> <s> </s> <pad>: the smallest vocabulary that
# can spell any text; sentencepiece needs at least one piece more.
MIN_VOCAB_SIZE = 261


class DataError(ValueError):
    """Bad input data or configuration; the message is meant to be shown as is."""


class DataFileNotFoundError(DataError, FileNotFoundError):
    """A configured input file or glob that does not exist."""


@dataclass
class TokenizerConfig:
    """SentencePiece options. Special ids: ``<unk>``=0, ``<s>`` (bos)=1, ``</s>`` (eos)=2, ``<pad>``=3.

    Normalisation is the identity (no NFKC, whitespace kept) so that
    ``decode(encode(text)) == text`` for every string, as in LLaMA's tokenizer.
    """

    vocab_size: int = 8000  # the demo/tiny setting; the study's seed100m used 35,000
    model_type: str = "unigram"  # or "bpe" (faster to train)
    # Share of character occurrences that get their own piece; the rarest characters
    # are spelled in UTF-8 bytes. sentencepiece advises 0.9995 for Japanese on large
    # corpora; on the demo corpus's 30k-sentence sample that drops every kanji seen
    # fewer than ~10 times (都 and 首 included), so the default keeps more.
    character_coverage: float = 0.9999
    # Always on: a character outside the vocabulary becomes its UTF-8 bytes (a rare
    # kanji costs 3 tokens, as in LLaMA) instead of <unk>. Kept as a field so that
    # configs state it; False is rejected.
    byte_fallback: bool = True
    # Sentences (lines) sampled for training; 0 uses all. The default keeps
    # training on the demo corpus to seconds; raise it (e.g. 2,000,000) for real corpora.
    input_sentence_size: int = 30_000

    def __post_init__(self) -> None:
        if isinstance(self.vocab_size, bool) or not isinstance(self.vocab_size, int) \
                or not MIN_VOCAB_SIZE <= self.vocab_size < 2**31:
            raise DataError(f"tokenizer.vocab_size must be an int >= {MIN_VOCAB_SIZE} (256 byte pieces "
                            f"+ 4 special tokens + 1), got {self.vocab_size!r}")
        if self.model_type not in MODEL_TYPES:
            raise DataError(f"unknown tokenizer.model_type {self.model_type!r}; allowed: {', '.join(MODEL_TYPES)}")
        if not isinstance(self.character_coverage, (int, float)) or not 0.98 <= self.character_coverage <= 1.0:
            raise DataError(f"tokenizer.character_coverage must be in [0.98, 1.0] (sentencepiece's range), "
                            f"got {self.character_coverage!r}")
        if self.byte_fallback is not True:
            raise DataError(f"tokenizer.byte_fallback must be True (no character may map to <unk>), "
                            f"got {self.byte_fallback!r}")
        if not isinstance(self.input_sentence_size, int) or self.input_sentence_size < 0:
            raise DataError(f"tokenizer.input_sentence_size must be an int >= 0 (0: all sentences), "
                            f"got {self.input_sentence_size!r}")


def _check_int(name: str, value: object, low: int, high: int, why: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise DataError(f"{name} must be an int in [{low}, {high}]{why}, got {value!r}")


@dataclass
class MQARConfig:
    """``data=mqar``: multi-query associative recall (Arora et al. 2023, "Zoology").

    A sequence is ``num_pairs`` key-value pairs, then a query region where ``num_queries``
    of the keys come back, each followed by its value; only those values are scored.
    Keys are drawn from the first half of the vocabulary, values (and the filler between
    queries) from the second half, so every key in the query region is a query. The
    sequence length is ``trainer.seq_len`` (checked against these options when training starts).
    """

    vocab_size: int = 256
    num_pairs: int = 16
    num_queries: Optional[int] = None  # None: every key is queried once

    def __post_init__(self) -> None:
        _check_int("data.mqar.vocab_size", self.vocab_size, 4, 2**31 - 1)
        half = self.vocab_size // 2
        _check_int("data.mqar.num_pairs", self.num_pairs, 1, half,
                   f" (distinct keys and values, each from half of vocab_size={self.vocab_size})")
        if self.num_queries is not None:
            _check_int("data.mqar.num_queries", self.num_queries, 1, self.num_pairs,
                       f" (distinct keys of num_pairs={self.num_pairs}; null: all of them)")


@dataclass
class InductionConfig:
    """``data=induction``: a random segment of distinct tokens followed by its copy, at a random
    place among random tokens; the copy's tokens after its first are scored (induction heads,
    Olsson et al. 2022). The sequence length is ``trainer.seq_len``."""

    vocab_size: int = 256
    segment_len: Optional[int] = None  # None: as long as fits, (trainer.seq_len + 1) // 2

    def __post_init__(self) -> None:
        _check_int("data.induction.vocab_size", self.vocab_size, 2, 2**31 - 1)
        if self.segment_len is not None:
            _check_int("data.induction.segment_len", self.segment_len, 2, self.vocab_size,
                       f" (distinct tokens of vocab_size={self.vocab_size}; null: as long as fits)")


@dataclass
class DataConfig:
    """Where the corpus comes from, how it is split, and where the cache lives.

    Sources: ``demo`` is the bundled corpus (``data/demo/corpus.jsonl.xz``);
    ``text`` reads ``paths`` (globs of ``.txt`` — documents separated by blank
    lines —, ``.jsonl`` with ``text_field``, or ``.parquet`` with column ``text_field``;
    ``.txt``/``.jsonl`` may be ``.gz``/``.xz`` compressed); ``hf`` streams a
    ``datasets`` dataset (``hf_name``, or a builder such as ``"parquet"`` /
    ``"json"`` with ``paths`` as its data files); ``mqar`` and ``induction`` are
    synthetic tasks generated from the seed (options in ``mqar`` / ``induction``).
    """

    source: str = "demo"
    paths: list[str] = field(default_factory=list)
    text_field: str = "text"
    hf_name: Optional[str] = None
    hf_config: Optional[str] = None
    hf_split: str = "train"
    # A hub dataset is identified by name/config/split/revision; pin the revision
    # (a commit sha) so that an upstream change cannot go unnoticed by the cache.
    hf_revision: Optional[str] = None
    val_fraction: float = 0.05  # share of documents held out, chosen by a seeded hash of their text
    split_seed: int = 0
    on_decode_error: str = "fail"  # "replace": invalid UTF-8 becomes U+FFFD (counted and logged)
    cache_dir: str = "data/cache"  # tokenizers/ and shards/; relative to the working directory
    shard_tokens: int = 2**27  # tokens per shard file (256 MiB at uint16)
    num_threads: int = 0  # sentencepiece threads for training and encoding; 0: all cores
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    # Options of the synthetic sources (used only by their source; no tokenizer, no files).
    mqar: MQARConfig = field(default_factory=MQARConfig)
    induction: InductionConfig = field(default_factory=InductionConfig)

    def __post_init__(self) -> None:
        for name, cls in (("tokenizer", TokenizerConfig), ("mqar", MQARConfig), ("induction", InductionConfig)):
            section = getattr(self, name)
            if isinstance(section, dict) or hasattr(section, "keys"):
                section = dict(section)
                unknown = sorted(set(section) - {f.name for f in fields(cls)})
                if unknown:
                    raise DataError(f"unknown data.{name} keys {unknown}; allowed: "
                                    f"{', '.join(f.name for f in fields(cls))}")
                setattr(self, name, cls(**section))
        if self.source not in SOURCES:
            raise DataError(f"unknown data.source {self.source!r}; allowed: {', '.join(SOURCES)}")
        if isinstance(self.paths, str):
            self.paths = [self.paths]
        self.paths = list(self.paths)
        if not all(isinstance(p, str) and p for p in self.paths):
            raise DataError(f"data.paths must be a list of non-empty glob strings, got {self.paths!r}")
        if self.source == "text" and not self.paths:
            raise DataError("data.source='text' needs data.paths: globs of .txt, .jsonl or .parquet files")
        if self.source in ("demo", *SYNTHETIC_SOURCES) and self.paths:
            raise DataError(f"data.paths={self.paths!r} is only used with data.source='text' or 'hf', "
                            f"not with {self.source!r}")
        if self.source == "hf" and not self.hf_name:
            raise DataError("data.source='hf' needs data.hf_name (a hub dataset, a local dataset "
                            "directory, or a builder such as 'parquet' with data.paths)")
        if not isinstance(self.text_field, str) or not self.text_field:
            raise DataError(f"data.text_field must be a non-empty string, got {self.text_field!r}")
        if not isinstance(self.val_fraction, (int, float)) or not 0 < self.val_fraction < 1:
            raise DataError(f"data.val_fraction must be in (0, 1), got {self.val_fraction!r}")
        if isinstance(self.split_seed, bool) or not isinstance(self.split_seed, int):
            raise DataError(f"data.split_seed must be an int, got {self.split_seed!r}")
        if self.on_decode_error not in DECODE_ERROR_MODES:
            raise DataError(f"unknown data.on_decode_error {self.on_decode_error!r}; "
                            f"allowed: {', '.join(DECODE_ERROR_MODES)}")
        if not isinstance(self.cache_dir, str) or not self.cache_dir:
            raise DataError(f"data.cache_dir must be a non-empty path, got {self.cache_dir!r}")
        if not isinstance(self.shard_tokens, int) or self.shard_tokens < 1024:
            raise DataError(f"data.shard_tokens must be an int >= 1024, got {self.shard_tokens!r}")
        if not isinstance(self.num_threads, int) or self.num_threads < 0:
            raise DataError(f"data.num_threads must be an int >= 0 (0: all cores), got {self.num_threads!r}")

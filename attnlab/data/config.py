"""Typed configuration of the data pipeline: where the text comes from and how it is tokenised.

Every dataclass validates itself once in ``__post_init__`` so that a typo in
a Hydra override fails with one line naming the bad value and the allowed ones.
``Optional[...]`` rather than ``X | None`` because OmegaConf builds its schema
from these annotations.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass, field, fields
from typing import Optional

# Generated from the seed (attnlab/data/synthetic.py): no files; each has an options section in DataConfig.
SYNTHETIC_SOURCES = ("mqar", "induction", "icr", "fuzzy_icr", "noisy_icr", "selective_copy", "compression",
                     "memorization")
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
            raise DataError(f"data.tokenizer.vocab_size must be an int >= {MIN_VOCAB_SIZE} (256 byte pieces "
                            f"+ 4 special tokens + 1), got {self.vocab_size!r}")
        if self.model_type not in MODEL_TYPES:
            raise DataError(f"unknown data.tokenizer.model_type {self.model_type!r}; allowed: {', '.join(MODEL_TYPES)}")
        if not isinstance(self.character_coverage, (int, float)) or not 0.98 <= self.character_coverage <= 1.0:
            raise DataError(f"data.tokenizer.character_coverage must be in [0.98, 1.0] (sentencepiece's range), "
                            f"got {self.character_coverage!r}")
        if self.byte_fallback is not True:
            raise DataError(f"data.tokenizer.byte_fallback must be True (no character may map to <unk>), "
                            f"got {self.byte_fallback!r}")
        if not isinstance(self.input_sentence_size, int) or self.input_sentence_size < 0:
            raise DataError(f"data.tokenizer.input_sentence_size must be an int >= 0 (0: all sentences), "
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


def _check_fraction(name: str, value: object, why: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise DataError(f"{name} must be a number in [0, 1){why}, got {value!r}")


# The MAD tasks (Poli et al. 2024, "Mechanistic Design and Scaling of Hybrid Architectures").
# Defaults are MAD's baselines (configs/tasks/*.yml of github:athms/mad-lab); the token layouts
# are in attnlab/data/synthetic.py.

@dataclass
class ICRConfig:
    """``data=icr``: in-context recall (MAD). A sequence of key-value pairs in which a key keeps
    its value within the sequence; a value is scored when its key came before (MAD's multi-query
    form). Keys come from the first half of the vocabulary, values from the second."""

    vocab_size: int = 16

    def __post_init__(self) -> None:
        _check_int("data.icr.vocab_size", self.vocab_size, 2, 2**31 - 1, " (a key and a value at least)")


@dataclass
class NoisyICRConfig:
    """``data=noisy_icr``: in-context recall with noise (MAD): each pair slot is, with probability
    ``frac_noise``, two tokens of a separate noise vocabulary instead (never scored)."""

    vocab_size: int = 32  # keys, values and the noise tokens
    noise_vocab_size: int = 16  # the last noise_vocab_size tokens are noise
    frac_noise: float = 0.2  # share of pair slots that hold noise

    def __post_init__(self) -> None:
        _check_int("data.noisy_icr.vocab_size", self.vocab_size, 3, 2**31 - 1,
                   " (a key, a value and a noise token at least)")
        _check_int("data.noisy_icr.noise_vocab_size", self.noise_vocab_size, 1, self.vocab_size - 2,
                   f" (vocab_size={self.vocab_size} keeps a key and a value)")
        _check_fraction("data.noisy_icr.frac_noise", self.frac_noise)


@dataclass
class FuzzyICRConfig:
    """``data=fuzzy_icr``: fuzzy in-context recall (MAD): keys are runs of 1..``key_len`` distinct
    key tokens and values runs of 1..``value_len`` value tokens, so the model must find where a
    key ends; every token of a value whose key came before is scored."""

    vocab_size: int = 16  # keys, values and one pad token
    key_len: int = 3  # MAD's k_motif_size: the longest key
    value_len: int = 3  # MAD's v_motif_size: the longest value

    def __post_init__(self) -> None:
        _check_int("data.fuzzy_icr.vocab_size", self.vocab_size, 5, 2**31 - 1,
                   " (two key tokens, two value tokens and the pad token at least)")
        half = (self.vocab_size - 1) // 2
        _check_int("data.fuzzy_icr.key_len", self.key_len, 1, half,
                   f" (distinct tokens of the {half} key tokens of vocab_size={self.vocab_size})")
        _check_int("data.fuzzy_icr.value_len", self.value_len, 1, self.vocab_size - 1 - half,
                   f" (distinct tokens of the {self.vocab_size - 1 - half} value tokens of "
                   f"vocab_size={self.vocab_size})")


@dataclass
class SelectiveCopyConfig:
    """``data=selective_copy``: selective copying (MAD): ``num_tokens_to_copy`` tokens scattered
    among blanks, then a copy token; the tokens are to be written out in order, with blanks as
    the inputs meanwhile."""

    vocab_size: int = 16  # data tokens and the blank and copy tokens
    num_tokens_to_copy: int = 16

    def __post_init__(self) -> None:
        _check_int("data.selective_copy.vocab_size", self.vocab_size, 3, 2**31 - 1,
                   " (a data token, the blank and the copy token at least)")
        _check_int("data.selective_copy.num_tokens_to_copy", self.num_tokens_to_copy, 1, 2**31 - 1)


@dataclass
class CompressionConfig:
    """``data=compression``: compression (MAD): random tokens, then a compression token; the
    sequence is to be written out again with the compression token as every input meanwhile."""

    vocab_size: int = 16  # data tokens and the compression token

    def __post_init__(self) -> None:
        _check_int("data.compression.vocab_size", self.vocab_size, 2, 2**31 - 1,
                   " (a data token and the compression token at least)")


@dataclass
class MemorizationConfig:
    """``data=memorization``: memorization (MAD): a fixed key -> value map, drawn from ``map_seed``
    and shared by every sequence, split and training seed, is asked key by key; the value never
    appears in the input, so it must be learned into the weights."""

    vocab_size: int = 256  # keys, values and the insert token: (vocab_size - 1) // 2 facts
    map_seed: int = 12345  # the map; keep it fixed across runs that should learn the same facts

    def __post_init__(self) -> None:
        _check_int("data.memorization.vocab_size", self.vocab_size, 3, 2**31 - 1,
                   " (a key, a value and the insert token at least)")
        if isinstance(self.map_seed, bool) or not isinstance(self.map_seed, int):
            raise DataError(f"data.memorization.map_seed must be an int, got {self.map_seed!r}")


@dataclass
class DataConfig:
    """Where the corpus comes from, how it is split, and where the cache lives.

    Sources: ``demo`` is the bundled corpus (``data/demo/corpus.jsonl.xz``);
    ``text`` reads ``paths`` (globs of ``.txt`` — documents separated by blank
    lines —, ``.jsonl`` with ``text_field``, or ``.parquet`` with column ``text_field``;
    ``.txt``/``.jsonl`` may be ``.gz``/``.xz`` compressed); ``hf`` streams a
    ``datasets`` dataset (``hf_name``, or a builder such as ``"parquet"`` /
    ``"json"`` with ``paths`` as its data files); ``mqar``, ``induction`` and the MAD tasks
    (``icr``, ``fuzzy_icr``, ``noisy_icr``, ``selective_copy``, ``compression``, ``memorization``)
    are synthetic tasks generated from the seed (options in the section of the same name).
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
    # The text files' encoding (.txt, .jsonl): utf-8, or one that keeps ASCII's newline, such as
    # cp932 (Windows Shift-JIS) or euc_jp. A leading byte-order mark is dropped; CRLF becomes LF.
    encoding: str = "utf-8"
    on_decode_error: str = "fail"  # "replace": undecodable bytes become U+FFFD (counted and logged per file)
    cache_dir: str = "data/cache"  # tokenizers/ and shards/; relative to the working directory
    shard_tokens: int = 2**27  # tokens per shard file (256 MiB at uint16)
    num_threads: int = 0  # sentencepiece threads for training and encoding; 0: all cores
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    # Options of the synthetic sources (used only by their source; no tokenizer, no files).
    mqar: MQARConfig = field(default_factory=MQARConfig)
    induction: InductionConfig = field(default_factory=InductionConfig)
    icr: ICRConfig = field(default_factory=ICRConfig)
    fuzzy_icr: FuzzyICRConfig = field(default_factory=FuzzyICRConfig)
    noisy_icr: NoisyICRConfig = field(default_factory=NoisyICRConfig)
    selective_copy: SelectiveCopyConfig = field(default_factory=SelectiveCopyConfig)
    compression: CompressionConfig = field(default_factory=CompressionConfig)
    memorization: MemorizationConfig = field(default_factory=MemorizationConfig)
    # A synthetic task's finite training set: None, an endless stream; n, training example i is
    # example i mod n (the first n of the stream, cycled). Validation stays its own stream.
    num_train_examples: Optional[int] = None

    def __post_init__(self) -> None:
        for name, cls in _SECTIONS.items():
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
        _check_encoding(self.encoding)
        self.encoding = codecs.lookup(self.encoding).name  # one name per codec (UTF8, utf_8: utf-8), one cache key
        if self.encoding != "utf-8" and self.source != "text":
            raise DataError(f"data.encoding={self.encoding!r} is only used with data.source='text' "
                            f"(files of .txt or .jsonl), not with {self.source!r}")
        if self.on_decode_error not in DECODE_ERROR_MODES:
            raise DataError(f"unknown data.on_decode_error {self.on_decode_error!r}; "
                            f"allowed: {', '.join(DECODE_ERROR_MODES)}")
        if not isinstance(self.cache_dir, str) or not self.cache_dir:
            raise DataError(f"data.cache_dir must be a non-empty path, got {self.cache_dir!r}")
        if not isinstance(self.shard_tokens, int) or self.shard_tokens < 1024:
            raise DataError(f"data.shard_tokens must be an int >= 1024, got {self.shard_tokens!r}")
        if not isinstance(self.num_threads, int) or self.num_threads < 0:
            raise DataError(f"data.num_threads must be an int >= 0 (0: all cores), got {self.num_threads!r}")
        if self.num_train_examples is not None:
            _check_int("data.num_train_examples", self.num_train_examples, 1, 2**63 - 1,
                       " (null: an endless stream)")
            if self.source not in SYNTHETIC_SOURCES:
                raise DataError(f"data.num_train_examples={self.num_train_examples} is only used with a "
                                f"synthetic source ({', '.join(SYNTHETIC_SOURCES)}), not with {self.source!r}")


def _check_encoding(encoding: object) -> None:
    """A codec Python knows that writes the newline as the byte \\n: files are read line by line."""
    examples = "e.g. utf-8, cp932 (Windows Shift-JIS), shift_jis, euc_jp"
    if not isinstance(encoding, str) or not encoding:
        raise DataError(f"data.encoding must be a codec name ({examples}), got {encoding!r}")
    try:
        newline = "\n".encode(encoding)
    except LookupError:  # an unknown name, or a codec that is not a text encoding (hex, rot13)
        raise DataError(f"unknown data.encoding {encoding!r}; Python's text codec names, {examples}") from None
    if newline != b"\n":
        raise DataError(f"data.encoding={encoding!r} does not write a newline as the byte \\n, so its files "
                        f"cannot be read line by line; convert them to UTF-8 (iconv -f {encoding} -t UTF-8)")


_SECTIONS = {"tokenizer": TokenizerConfig, "mqar": MQARConfig, "induction": InductionConfig, "icr": ICRConfig,
             "fuzzy_icr": FuzzyICRConfig, "noisy_icr": NoisyICRConfig, "selective_copy": SelectiveCopyConfig,
             "compression": CompressionConfig, "memorization": MemorizationConfig}

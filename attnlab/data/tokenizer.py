"""SentencePiece tokenizer: training with attnlab's fixed options, and a thin wrapper for use.

Fixed options, and why:
- ``byte_fallback``: any character outside the vocabulary is spelled as its UTF-8
  bytes (``<0xE9>`` ...), so nothing is ever ``<unk>``;
- identity normalisation and no whitespace squashing: ``decode(encode(s)) == s``;
- ``split_digits``: numbers are spelled digit by digit, as in LLaMA;
- special ids ``<unk>``=0, ``<s>``=1 (bos), ``</s>``=2 (eos), ``<pad>``=3.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import sentencepiece as spm

from attnlab.data.config import DataError, TokenizerConfig

UNK_ID, BOS_ID, EOS_ID, PAD_ID = 0, 1, 2, 3


class Tokenizer:
    """A trained SentencePiece model; ``sha256`` identifies it in shard indexes."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"tokenizer model not found: {self.path}")
        proto = self.path.read_bytes()
        self.sha256 = hashlib.sha256(proto).hexdigest()
        try:
            self._sp = spm.SentencePieceProcessor(model_proto=proto)
        except RuntimeError:
            raise DataError(f"{self.path} is not a valid sentencepiece model") from None
        self.vocab_size: int = self._sp.get_piece_size()
        self.bos_id: int = self._sp.bos_id()
        self.eos_id: int = self._sp.eos_id()
        self.pad_id: int = self._sp.pad_id()
        self.unk_id: int = self._sp.unk_id()

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        ids = self._sp.encode(text)
        return [self.bos_id] * bos + ids + [self.eos_id] * eos

    def encode_batch(self, texts: list[str], num_threads: int = 0) -> list[list[int]]:
        """Encode many strings at once on ``num_threads`` threads (0: all cores)."""
        return self._sp.encode(texts, num_threads=num_threads or os.cpu_count() or 1)

    def decode(self, ids: Iterable[int]) -> str:
        return self._sp.decode([int(i) for i in ids])

    def id_to_piece(self, token_id: int) -> str:
        return self._sp.id_to_piece(int(token_id))

    def is_byte(self, token_id: int) -> bool:
        return self._sp.is_byte(int(token_id))

    def __repr__(self) -> str:
        return f"Tokenizer({str(self.path)!r}, vocab_size={self.vocab_size}, sha256={self.sha256[:12]})"


TOKENIZER_SAMPLING_SEED = 0


def sample_sentences(sentences: Iterable[str], k: int, seed: int) -> list[str]:
    """A uniform sample of ``k`` sentences in one pass (reservoir sampling), the same for the
    same input and seed."""
    rng = random.Random(seed)
    reservoir: list[str] = []
    for i, sentence in enumerate(sentences):
        if i < k:
            reservoir.append(sentence)
        elif (j := rng.randrange(i + 1)) < k:
            reservoir[j] = sentence
    return reservoir


def train_tokenizer(sentences: Iterator[str], cfg: TokenizerConfig, out: Path, num_threads: int = 0) -> None:
    """Train on ``sentences`` (lines of text) and write the model to ``out``.

    Raises ``DataError`` with sentencepiece's reason if training fails (most often
    a vocabulary too large for a small corpus).
    """
    model = io.BytesIO()
    # Unigram training starts from the most frequent substrings; a seed set a few
    # times the vocab size is plenty and keeps training on small corpora fast.
    seed_size = max(4 * cfg.vocab_size, 30_000)
    # sentencepiece's own sampling (input_sentence_size) differs from process to process
    # even with set_random_generator_seed, so two fresh clones would train different
    # tokenizers. Sample here with a seeded generator and let it read all of the sample.
    if cfg.input_sentence_size:
        sentences = iter(sample_sentences(sentences, cfg.input_sentence_size, TOKENIZER_SAMPLING_SEED))
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=sentences, model_writer=model,
            model_type=cfg.model_type, vocab_size=cfg.vocab_size,
            character_coverage=cfg.character_coverage, byte_fallback=True,
            input_sentence_size=0,
            seed_sentencepiece_size=seed_size,
            normalization_rule_name="identity", remove_extra_whitespaces=False,
            split_digits=True, allow_whitespace_only_pieces=True,
            max_sentence_length=1 << 16,  # bytes; longer lines are skipped by sentencepiece
            unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID, pad_id=PAD_ID,
            num_threads=num_threads or os.cpu_count() or 1, minloglevel=2,
        )
    except RuntimeError as e:
        raise DataError(f"tokenizer training failed (vocab_size={cfg.vocab_size}, model_type="
                        f"{cfg.model_type}): {_explain(str(e), cfg)}") from None
    out.write_bytes(model.getvalue())


def _explain(message: str, cfg: TokenizerConfig) -> str:
    """sentencepiece's two common failures, in attnlab's option names."""
    if m := re.search(r"smaller than required_chars\. \d+ vs (\d+)", message):
        return (f"the corpus needs {m.group(1)} pieces (characters + 260 byte/special) at "
                f"data.tokenizer.character_coverage={cfg.character_coverage}; raise data.tokenizer.vocab_size "
                f"or lower data.tokenizer.character_coverage (down to 0.98)")
    if m := re.search(r"Vocabulary size too high \(\d+\)\. Please set it to a value <= (\d+)", message):
        return (f"the corpus is too small for this vocabulary; set data.tokenizer.vocab_size <= {m.group(1)} "
                f"or add text")
    return message.strip().splitlines()[-1] if message.strip() else "unknown error"


def check_vocab_fits(tokenizer_vocab: int, model_vocab: int) -> None:
    """Raise if token ids of the tokenizer could index past the model's embedding."""
    if tokenizer_vocab > model_vocab:
        padded = -(-tokenizer_vocab // 64) * 64
        raise ValueError(f"tokenizer vocab_size {tokenizer_vocab} exceeds model vocab_size {model_vocab}; "
                         f"set the model's vocab_size >= {tokenizer_vocab} (padded to a multiple of 64: {padded})")

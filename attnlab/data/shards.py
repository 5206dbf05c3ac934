"""Packed token shards: flat binary files of token ids plus one JSON index per shard set.

A shard set (one split) is ``<split>.json`` next to ``<split>-00000.bin`` ... Each
``.bin`` is a flat little-endian array of ``uint16`` ids (``uint32`` when the
vocabulary does not fit), read through ``numpy.memmap``. Documents are stored as
``<s> tokens </s>``, back to back. The index records dtype, vocab size, token and
document counts, the tokenizer's sha256, the source and each shard's size and
sha256, so that a truncated or foreign shard is detected when opened.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from attnlab.data.config import DataError

FORMAT = "attnlab-shards/1"


def dtype_for_vocab(vocab_size: int) -> np.dtype:
    return np.dtype("<u2") if vocab_size <= 2**16 else np.dtype("<u4")


@dataclass(frozen=True)
class ShardFile:
    file: str  # relative to the index
    n_tokens: int
    n_bytes: int
    sha256: str


@dataclass(frozen=True)
class ShardIndex:
    split: str
    dtype: str  # numpy dtype name: "uint16" or "uint32"
    vocab_size: int
    n_tokens: int
    n_documents: int
    tokenizer_sha256: str
    bos_id: int
    eos_id: int
    source: str  # human-readable description
    key: str  # the cache key this set was built for
    shards: tuple[ShardFile, ...] = ()
    format: str = FORMAT
    path: Path | None = field(default=None, compare=False)  # where it was loaded from

    def save(self, path: Path) -> None:
        data = asdict(self)
        data.pop("path")
        path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> ShardIndex:
        """Read an index and check every shard's size against it (not the content)."""
        path = Path(path)
        if path.is_dir():
            raise DataError(f"{path} is a directory; expected a shard index such as {path / 'train.json'}")
        try:
            data: dict[str, Any] = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"shard index not found: {path}") from None
        except ValueError as e:
            raise DataError(f"{path}: not a valid shard index ({e})") from None
        if data.get("format") != FORMAT:
            raise DataError(f"{path}: unknown shard index format {data.get('format')!r}; expected {FORMAT!r}")
        try:
            data["shards"] = tuple(ShardFile(**s) for s in data["shards"])
            index = cls(**data, path=path)
        except (KeyError, TypeError) as e:
            raise DataError(f"{path}: malformed shard index ({e})") from None
        index.check_files()
        return index

    @property
    def itemsize(self) -> int:
        return np.dtype(self.dtype).itemsize

    def shard_paths(self) -> list[Path]:
        assert self.path is not None
        return [self.path.parent / s.file for s in self.shards]

    def check_files(self) -> None:
        if sum(s.n_tokens for s in self.shards) != self.n_tokens:
            raise DataError(f"{self.path}: shard token counts do not add up to n_tokens={self.n_tokens}")
        for shard, file in zip(self.shards, self.shard_paths()):
            if not file.is_file():
                raise DataError(f"shard {file} listed in {self.path} is missing; delete "
                                f"{file.parent} and run prepare_data again")
            size = file.stat().st_size
            if size != shard.n_bytes or size != shard.n_tokens * self.itemsize:
                raise DataError(f"shard {file} is {size} bytes but its index says {shard.n_bytes} "
                                f"({shard.n_tokens} x {self.dtype}): truncated or corrupt; delete "
                                f"{file.parent} and run prepare_data again")

    def verify_checksums(self) -> None:
        """Read every shard and compare its sha256 with the index (slow on big corpora)."""
        for shard, file in zip(self.shards, self.shard_paths()):
            if file_sha256(file) != shard.sha256:
                raise DataError(f"shard {file} does not match the sha256 in {self.path}: corrupt")

    def memmaps(self) -> list[np.memmap]:
        """One read-only map per shard (the writer never leaves an empty shard)."""
        dtype = np.dtype(self.dtype).newbyteorder("<")  # shards are little-endian on every host
        return [np.memmap(p, dtype=dtype, mode="r", shape=(s.n_tokens,))
                for s, p in zip(self.shards, self.shard_paths())]

    def read_all(self) -> np.ndarray:
        """Every token of the set in order (for tests and small sets)."""
        maps = self.memmaps()
        return np.concatenate(maps) if maps else np.zeros(0, dtype=self.dtype)


class ShardWriter:
    """Appends token arrays to ``<prefix>-NNNNN.bin`` files of at most ``shard_tokens`` each."""

    def __init__(self, directory: Path, prefix: str, dtype: np.dtype, shard_tokens: int) -> None:
        self.directory, self.prefix, self.dtype, self.shard_tokens = directory, prefix, dtype, shard_tokens
        self.shards: list[ShardFile] = []
        self.n_tokens = 0
        self.n_documents = 0
        self._file = None
        self._hash = None
        self._count = 0

    def _open(self) -> None:
        name = f"{self.prefix}-{len(self.shards):05d}.bin"
        self._file = open(self.directory / name, "wb")
        self._name, self._hash, self._count = name, hashlib.sha256(), 0

    def _close_current(self) -> None:
        if self._file is not None:
            self._file.close()
            self.shards.append(ShardFile(self._name, self._count, self._count * self.dtype.itemsize,
                                         self._hash.hexdigest()))
            self._file = None

    def write(self, tokens: np.ndarray, n_documents: int = 0) -> None:
        tokens = np.ascontiguousarray(tokens, dtype=self.dtype)
        self.n_documents += n_documents
        while tokens.size:
            if self._file is None:
                self._open()
            take = min(tokens.size, self.shard_tokens - self._count)
            chunk = tokens[:take].tobytes()
            self._file.write(chunk)
            self._hash.update(chunk)
            self._count += take
            self.n_tokens += take
            tokens = tokens[take:]
            if self._count == self.shard_tokens:
                self._close_current()

    def close(self) -> tuple[ShardFile, ...]:
        self._close_current()
        return tuple(self.shards)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()

"""Corpus sources: the bundled demo corpus, user files (.txt/.jsonl/.parquet) and ``datasets``.

Each source resolves its inputs up front (so a missing file fails before any
work), describes itself by content (the cache key: a changed file means a
rebuild) and yields documents as strings. Empty or whitespace-only documents
are skipped everywhere. Files are decoded from ``data.encoding``; a leading byte-order
mark is dropped and CRLF line endings become LF, so that the same text saved by
another editor gives the same tokens (the tokenizer keeps every character as it is).
"""

from __future__ import annotations

import glob
import gzip
import json
import logging
import lzma
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from attnlab.atomic import atomic_write
from attnlab.data.config import DataConfig, DataError, DataFileNotFoundError
from attnlab.data.shards import file_sha256

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
DEMO_CORPUS = REPO_ROOT / "data" / "demo" / "corpus.jsonl.xz"
TEXT_SUFFIXES = (".txt", ".txt.gz", ".txt.xz", ".jsonl", ".jsonl.gz", ".jsonl.xz", ".parquet")


@dataclass
class Corpus:
    """A resolved source: ``fingerprint`` identifies its content, ``documents()`` reads it."""

    kind: str
    description: str  # one line for logs and shard indexes
    fingerprint: dict[str, Any]
    files: list[Path]
    cfg: DataConfig
    # Files whose replaced bytes were logged: the corpus is read twice (tokenizer, shards), logged once.
    reported: set[Path] = field(default_factory=set)

    def documents(self) -> Iterator[str]:
        for text in self._documents_as_stored():
            yield text.replace("\r\n", "\n")

    def _documents_as_stored(self) -> Iterator[str]:
        if self.kind == "hf":
            yield from _hf_documents(self.cfg, self.files)
            return
        field_name = "text" if self.kind == "demo" else self.cfg.text_field
        for path in self.files:
            yield from read_file(path, field_name, self.cfg.on_decode_error, self.cfg.encoding, self.reported)


def resolve_source(cfg: DataConfig, cache_dir: Path) -> Corpus:
    """Find the inputs of ``cfg`` and fingerprint them; raises if any is missing."""
    hashes = _HashCache(cache_dir / "file_hashes.json")
    common = {"on_decode_error": cfg.on_decode_error, "encoding": cfg.encoding, "normalised": "bom, crlf"}
    if cfg.source == "demo":
        if not DEMO_CORPUS.is_file():
            raise DataFileNotFoundError(f"demo corpus not found at {DEMO_CORPUS}; rebuild it with "
                                        "`python scripts/build_demo_corpus.py`")
        fp = {"source": "demo", "files": [hashes.sha256(DEMO_CORPUS)], **common}
        return Corpus("demo", f"demo corpus {DEMO_CORPUS.name}", fp, [DEMO_CORPUS], cfg)
    files = expand_paths(cfg.paths) if cfg.paths else []
    if cfg.source == "text":
        for path in files:
            if not path.name.endswith(TEXT_SUFFIXES):
                raise DataError(f"unsupported file type {str(path)!r}; allowed suffixes: {', '.join(TEXT_SUFFIXES)}")
        fp = {"source": "text", "text_field": cfg.text_field, "files": [hashes.sha256(p) for p in files], **common}
        desc = f"{len(files)} file(s) from {', '.join(cfg.paths)}"
        return Corpus("text", desc, fp, files, cfg)
    # hf: a local dataset directory is fingerprinted by its files; a hub dataset
    # by name/config/split/revision (see DataConfig.hf_revision).
    local = Path(os.path.expanduser(cfg.hf_name))
    local_files = sorted(p for p in local.rglob("*") if p.is_file()) if local.is_dir() else []
    fp = {"source": "hf", "hf_name": cfg.hf_name, "hf_config": cfg.hf_config, "hf_split": cfg.hf_split,
          "hf_revision": cfg.hf_revision, "text_field": cfg.text_field,
          "files": [hashes.sha256(p) for p in [*files, *local_files]], **common}
    desc = f"hf {cfg.hf_name}" + (f"/{cfg.hf_config}" if cfg.hf_config else "") + f" split={cfg.hf_split}"
    return Corpus("hf", desc, fp, files, cfg)


def expand_paths(patterns: list[str]) -> list[Path]:
    """Sorted, de-duplicated files matching the globs; a glob matching no file is an error."""
    files: dict[Path, None] = {}
    for pattern in patterns:
        matches = sorted(Path(m) for m in glob.glob(os.path.expanduser(pattern), recursive=True))
        matches = [m for m in matches if m.is_file()]
        if not matches:
            raise DataFileNotFoundError(f"data.paths: no files match {pattern!r} (working directory {os.getcwd()}); "
                                        f"give globs of {', '.join(TEXT_SUFFIXES)} files")
        files.update(dict.fromkeys(m.resolve() for m in matches))
    if empty := [str(f) for f in files if f.stat().st_size == 0]:
        log.warning("data.paths: %d empty file(s), which add no text: %s", len(empty), ", ".join(empty))
    return list(files)


# --------------------------------------------------------------------------- readers


def _open_binary(path: Path) -> IO[bytes]:
    if path.name.endswith(".gz"):
        return gzip.open(path, "rb")
    if path.name.endswith(".xz"):
        return lzma.open(path, "rb")
    return open(path, "rb")


# Encodings a Japanese file that is not UTF-8 is likely in, tried to name the setting that reads it.
JAPANESE_ENCODINGS = ("cp932", "euc_jp")


class _LineDecoder:
    """Decodes one file's lines from ``encoding``: a leading byte-order mark is dropped; an
    undecodable line fails, naming the file, the line and an encoding that reads it, or (mode
    ``replace``) has its bad bytes replaced by U+FFFD, counted and logged once per file."""

    def __init__(self, path: Path, encoding: str, mode: str, reported: set[Path]) -> None:
        self.path, self.encoding, self.mode, self.reported = path, encoding, mode, reported
        self.replaced: list[int] = []  # line numbers

    def decode(self, raw: bytes, lineno: int) -> str:
        try:
            text = raw.decode(self.encoding)
        except UnicodeDecodeError as e:
            if self.mode == "fail" and raw.startswith((b"\xff\xfe", b"\xfe\xff")) and lineno == 1:
                # Windows Notepad's "Unicode": a UTF-16 file, which no line-by-line decoding reads
                raise DataError(f"{self.path} starts with a UTF-16 byte-order mark ({raw[:2]!r}): it is UTF-16, "
                                f"which cannot be read line by line; convert it to UTF-8 "
                                f"(iconv -f UTF-16 -t UTF-8)") from None
            if self.mode == "fail":
                readers = [enc for enc in JAPANESE_ENCODINGS if enc != self.encoding and _reads(self.path, enc)]
                hint = f"set data.encoding={' or '.join(readers)} if the file is in that encoding, " if readers else ""
                raise DataError(f"{self.path}: line {lineno}: invalid {self.encoding} at byte {e.start} "
                                f"({raw[e.start:e.start + 4]!r}); {hint}fix the file, or set "
                                f"data.on_decode_error=replace (bad bytes become U+FFFD)") from None
            self.replaced.append(lineno)
            text = raw.decode(self.encoding, errors="replace")
        return text.removeprefix("\ufeff") if lineno == 1 else text

    def report(self, lines: int) -> None:
        if self.replaced and self.path not in self.reported:
            self.reported.add(self.path)
            log.warning("%s: %d of %d line(s) had bytes invalid in %s, replaced by U+FFFD (first: line %d)%s",
                        self.path, len(self.replaced), lines, self.encoding, self.replaced[0],
                        "; is data.encoding right for this file?" if len(self.replaced) > lines // 2 else "")


def _reads(path: Path, encoding: str, limit: int = 2**20) -> bool:
    """Whether the file's first ``limit`` bytes (whole lines) decode in ``encoding``: one line is
    not enough, a short EUC-JP line often decodes as cp932 too."""
    with _open_binary(path) as f:
        head = f.read(limit)
    if len(head) == limit:
        head = head[:head.rfind(b"\n") + 1]
    try:
        head.decode(encoding)
    except UnicodeDecodeError:
        return False
    return True


def read_file(path: Path, text_field: str, on_decode_error: str = "fail", encoding: str = "utf-8",
              reported: set[Path] | None = None) -> Iterator[str]:
    """Documents of one file: ``.txt`` blocks between blank lines, ``.jsonl`` lines, ``.parquet`` rows.
    ``reported``: files whose replaced bytes are already logged (added to as they are)."""
    name = path.name
    reported = set() if reported is None else reported
    if name.endswith(".parquet"):
        yield from _read_parquet(path, text_field)  # parquet strings are UTF-8 by the format
    elif name.endswith((".jsonl", ".jsonl.gz", ".jsonl.xz")):
        yield from _read_jsonl(path, text_field, _LineDecoder(path, encoding, on_decode_error, reported))
    else:
        yield from _read_txt(path, _LineDecoder(path, encoding, on_decode_error, reported))


def _read_txt(path: Path, decoder: _LineDecoder) -> Iterator[str]:
    # Blank lines separate documents: a single large file still yields many
    # documents to split train/val by, and is read in bounded memory. Documents
    # that must keep their blank lines belong in .jsonl.
    lines: list[str] = []
    lineno = 0
    with _open_binary(path) as f:
        for lineno, raw in enumerate(f, 1):
            line = decoder.decode(raw, lineno)
            if line.strip():
                lines.append(line)
            elif lines:
                yield "".join(lines).rstrip("\r\n")
                lines = []
    if lines:
        yield "".join(lines).rstrip("\r\n")
    decoder.report(lineno)


def _read_jsonl(path: Path, text_field: str, decoder: _LineDecoder) -> Iterator[str]:
    lineno = 0
    with _open_binary(path) as f:
        for lineno, raw in enumerate(f, 1):
            line = decoder.decode(raw, lineno)
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}: line {lineno}: not valid JSON ({e.msg.removesuffix(' at')} at column "
                                f"{e.colno})") from None
            if not isinstance(row, dict) or text_field not in row:
                present = sorted(row) if isinstance(row, dict) else type(row).__name__
                raise DataError(f"{path}: line {lineno}: no field {text_field!r} (present: {present}); "
                                "set data.text_field")
            text = row[text_field]
            if not isinstance(text, str):
                raise DataError(f"{path}: line {lineno}: field {text_field!r} is {type(text).__name__}, not a string")
            if text.strip():
                yield text
    decoder.report(lineno)


def _read_parquet(path: Path, text_field: str) -> Iterator[str]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    columns = pf.schema_arrow.names
    if text_field not in columns:
        raise DataError(f"{path}: no column {text_field!r} (columns: {columns}); set data.text_field")
    for batch in pf.iter_batches(columns=[text_field], batch_size=4096):
        for text in batch.column(0).to_pylist():
            if isinstance(text, bytes):
                try:
                    text = text.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise DataError(f"{path}: a value of column {text_field!r} is not UTF-8 (byte {e.start}); "
                                    "store text as a string column") from None
            if text and text.strip():
                yield text


def _hf_documents(cfg: DataConfig, files: list[Path]) -> Iterator[str]:
    try:
        import datasets
    except ImportError:
        raise DataError("data.source='hf' needs the `datasets` package: pip install -e '.[hf]'") from None
    kwargs: dict[str, Any] = {"split": cfg.hf_split, "streaming": True}
    if cfg.hf_config:
        kwargs["name"] = cfg.hf_config
    if cfg.hf_revision:
        kwargs["revision"] = cfg.hf_revision
    if files:
        kwargs["data_files"] = [str(p) for p in files]
    try:
        ds = datasets.load_dataset(cfg.hf_name, **kwargs)
    except Exception as e:  # datasets raises many types; all mean "cannot load this"
        raise DataError(f"cannot load hf dataset {cfg.hf_name!r} ({kwargs}): {type(e).__name__}: {e}") from e
    for i, row in enumerate(ds):
        if cfg.text_field not in row:
            raise DataError(f"hf dataset {cfg.hf_name!r}: row {i}: no field {cfg.text_field!r} "
                            f"(present: {sorted(row)}); set data.text_field")
        text = row[cfg.text_field]
        if isinstance(text, str) and text.strip():
            yield text


# --------------------------------------------------------------------------- hashing


class _HashCache:
    """sha256 of files, remembered by (path, size, mtime) so large corpora are read once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.entries: dict[str, Any] = json.loads(path.read_text())
        except (OSError, ValueError):
            self.entries = {}

    def sha256(self, file: Path) -> str:
        st = file.stat()
        key = str(file.resolve())
        hit = self.entries.get(key)
        if hit and hit["size"] == st.st_size and hit["mtime_ns"] == st.st_mtime_ns:
            return hit["sha256"]
        digest = file_sha256(file)
        self.entries[key] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
        self._save()
        return digest

    def _save(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_write(self.path) as file:
                file.write(json.dumps(self.entries, indent=0))
        except OSError as e:  # a read-only cache only costs re-hashing
            log.debug("cannot save %s: %s", self.path, e)

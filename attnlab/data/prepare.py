"""``prepare_data``: corpus -> trained tokenizer -> train/val token shards, cached by content.

Cache layout under ``cfg.cache_dir`` (default ``data/cache/``, git-ignored)::

    tokenizers/<key>/tokenizer.model, meta.json
    shards/<key>/train.json, train-00000.bin, ..., val.json, val-00000.bin, ...

Keys are hashes of the source's content fingerprint plus every option that
changes the result, so a changed source or tokenizer means a new directory
(a rebuild), never a silent reuse. Each directory is written under a temporary
name and renamed into place when complete: a crash leaves no half-built cache,
and concurrent callers (e.g. DDP ranks) cannot see each other's partial work.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from attnlab.data.config import SYNTHETIC_SOURCES, DataConfig, DataError
from attnlab.data.dataset import windows_per_shard
from attnlab.data.shards import FORMAT, ShardIndex, ShardWriter, dtype_for_vocab
from attnlab.data.sources import Corpus, resolve_source
from attnlab.data.synthetic import SyntheticTask
from attnlab.data.tokenizer import Tokenizer, train_tokenizer

log = logging.getLogger(__name__)

ENCODE_BATCH_CHARS = 4_000_000  # text per sentencepiece batch call: threads stay busy, memory bounded


@dataclass(frozen=True)
class PreparedData:
    """What training needs: the tokenizer and the two shard indexes; or, for a synthetic
    source, the task (``task``; no tokenizer or shards: those fields are None)."""

    tokenizer_path: Path | None
    tokenizer_sha256: str | None
    vocab_size: int  # the tokenizer's (the task's); the model's embedding may be padded beyond it
    train: Path | None  # shard index JSON, for TokenWindowDataset
    val: Path | None
    train_tokens: int | None
    val_tokens: int | None
    source: str
    task: SyntheticTask | None = None

    def tokenizer(self) -> Tokenizer:
        if self.tokenizer_path is None:
            raise DataError(f"{self.source} is a synthetic task: it has no tokenizer")
        tok = Tokenizer(self.tokenizer_path)
        if tok.sha256 != self.tokenizer_sha256:
            raise DataError(f"{self.tokenizer_path} changed since prepare_data (sha256 {tok.sha256[:12]} != "
                            f"{self.tokenizer_sha256[:12]}); run prepare_data again")
        return tok

    def check_fits(self, seq_len: int) -> None:
        """Refuse a ``trainer.seq_len`` that a split cannot fill once (a task's options that do not
        fit it), before the run directory is claimed."""
        if self.task is not None:
            self.task.check_seq_len(seq_len)
            return
        for split, path in (("training", self.train), ("validation", self.val)):
            index = ShardIndex.load(path)
            if not any(windows_per_shard(index, seq_len)):
                tokens = index.n_tokens
                more = ", or raise data.val_fraction" if split == "validation" else ""
                raise DataError(f"the {split} split has {tokens:,} tokens ({self.source}), too few for one "
                                f"window of trainer.seq_len={seq_len} (+1 target); lower trainer.seq_len, "
                                f"add text{more}")


def is_val_document(text: str, seed: int, val_fraction: float) -> bool:
    """Seeded, content-keyed split: identical documents always land in the same split,
    and the decision does not depend on corpus order or size (streaming-friendly)."""
    key = seed.to_bytes(8, "little", signed=True)
    h = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8, key=key)
    return int.from_bytes(h.digest(), "little") < val_fraction * 2**64


def prepare_data(cfg: DataConfig) -> PreparedData:
    """Train (or reuse) the tokenizer and build (or reuse) the shards for ``cfg``. Idempotent.
    A synthetic source (``mqar``, ``induction``) needs neither: its task is returned at once."""
    if cfg.source in SYNTHETIC_SOURCES:
        task = SyntheticTask.from_config(cfg)
        return PreparedData(None, None, task.vocab_size, None, None, None, None, task.description, task)
    cache = Path(cfg.cache_dir).expanduser().resolve()
    corpus = resolve_source(cfg, cache)
    source_key = _hash(corpus.fingerprint)

    tok_key = _hash({"source": source_key, "tokenizer": dataclasses.asdict(cfg.tokenizer),
                     "split": [cfg.val_fraction, cfg.split_seed], "version": 2})
    tok_dir = _build_once(cache / "tokenizers" / tok_key[:20], "tokenizer.model",
                          lambda tmp: _train(corpus, cfg, tmp), "tokenizer",
                          lambda d: Tokenizer(d / "tokenizer.model").vocab_size == cfg.tokenizer.vocab_size)
    tok = Tokenizer(tok_dir / "tokenizer.model")

    shard_key = _hash({"source": source_key, "tokenizer_sha256": tok.sha256, "format": FORMAT,
                       "split": [cfg.val_fraction, cfg.split_seed], "shard_tokens": cfg.shard_tokens})

    def shards_valid(d: Path) -> bool:  # loading checks every shard's size
        return all(ShardIndex.load(d / f"{s}.json").key == shard_key for s in ("train", "val"))

    shard_dir = _build_once(cache / "shards" / shard_key[:20], "val.json",
                            lambda tmp: _encode(corpus, cfg, tok, shard_key, tmp), "shards", shards_valid)
    train, val = (ShardIndex.load(shard_dir / f"{s}.json") for s in ("train", "val"))
    return PreparedData(tok.path, tok.sha256, tok.vocab_size, train.path, val.path,
                        train.n_tokens, val.n_tokens, corpus.description)


def _hash(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def _build_once(final: Path, marker: str, build: Callable[[Path], None], what: str,
                valid: Callable[[Path], bool]) -> Path:
    """Return ``final`` if complete and valid, else build it in a temp dir and rename it into place."""
    if (final / marker).exists():
        try:
            if valid(final):
                log.info("reusing cached %s %s", what, final)
                return final
            log.warning("cached %s at %s does not match its key; rebuilding", what, final)
        except (DataError, OSError) as e:
            log.warning("cached %s at %s is unusable (%s); rebuilding", what, final, e)
        shutil.rmtree(final, ignore_errors=True)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    try:
        build(tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / marker).exists():  # not a concurrent builder winning the race
                raise
            log.info("another process built %s first; using it", final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _documents(corpus: Corpus, cfg: DataConfig) -> Iterator[tuple[str, bool]]:
    """(text, is_val) for every document; raises DataError on an empty corpus."""
    n = 0
    for text in corpus.documents():
        n += 1
        yield text, is_val_document(text, cfg.split_seed, cfg.val_fraction)
    if n == 0:
        raise DataError(f"corpus is empty: {corpus.description} has no non-empty documents")


def _train(corpus: Corpus, cfg: DataConfig, out: Path) -> None:
    t0 = time.perf_counter()
    failure: list[BaseException] = []
    n_train = [0]

    def sentences() -> Iterator[str]:
        # sentencepiece calls this from C++; an exception here would be reported as
        # a bare "iterator failed", so stop instead and re-raise ours afterwards.
        try:
            for text, val in _documents(corpus, cfg):
                if not val:
                    n_train[0] += 1
                    yield from (line for line in text.split("\n") if line.strip())
        except BaseException as e:  # noqa: BLE001 (re-raised below)
            failure.append(e)

    log.info("training a %s tokenizer (vocab %d) on %s", cfg.tokenizer.model_type,
             cfg.tokenizer.vocab_size, corpus.description)
    try:
        train_tokenizer(sentences(), cfg.tokenizer, out / "tokenizer.model", cfg.num_threads)
    except DataError:
        if not failure and n_train[0] > 0:
            raise
    if failure:
        raise failure[0]
    if n_train[0] == 0:
        raise DataError(f"no training documents: every document of {corpus.description} fell in the "
                        f"validation split (val_fraction={cfg.val_fraction}); add documents")
    meta = {"source": corpus.description, "fingerprint": corpus.fingerprint,
            "tokenizer": dataclasses.asdict(cfg.tokenizer), "train_documents": n_train[0],
            "seconds": round(time.perf_counter() - t0, 2)}
    (out / "meta.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    log.info("trained tokenizer in %.1f s", meta["seconds"])


def _batches(docs: Iterator[tuple[str, bool]]) -> Iterator[list[tuple[str, bool]]]:
    batch, chars = [], 0
    for doc in docs:
        batch.append(doc)
        chars += len(doc[0])
        if chars >= ENCODE_BATCH_CHARS:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def _encode(corpus: Corpus, cfg: DataConfig, tok: Tokenizer, key: str, out: Path) -> None:
    t0 = time.perf_counter()
    dtype = dtype_for_vocab(tok.vocab_size)
    writers = {split: ShardWriter(out, split, dtype, cfg.shard_tokens) for split in ("train", "val")}
    for batch in _batches(_documents(corpus, cfg)):
        ids = tok.encode_batch([text for text, _ in batch], cfg.num_threads)
        for split, want_val in (("train", False), ("val", True)):
            docs = [d for d, (_, val) in zip(ids, batch) if val == want_val]
            if not docs:
                continue
            # <s> doc </s> for each document, flattened without a Python-level copy per token.
            n = sum(len(d) for d in docs) + 2 * len(docs)
            flat = np.fromiter(itertools.chain.from_iterable((tok.bos_id, *d, tok.eos_id) for d in docs),
                               dtype=dtype, count=n)
            writers[split].write(flat, len(docs))
    if writers["val"].n_documents == 0:
        raise DataError(f"validation split is empty: no document of {corpus.description} was drawn at "
                        f"val_fraction={cfg.val_fraction}; raise data.val_fraction or add documents")
    if writers["train"].n_documents == 0:
        raise DataError(f"training split is empty at val_fraction={cfg.val_fraction}; add documents")
    for split, writer in writers.items():
        ShardIndex(split=split, dtype=dtype.name, vocab_size=tok.vocab_size, n_tokens=writer.n_tokens,
                   n_documents=writer.n_documents, tokenizer_sha256=tok.sha256, bos_id=tok.bos_id,
                   eos_id=tok.eos_id, source=corpus.description, key=key,
                   shards=writer.close()).save(out / f"{split}.json")
    n = writers["train"].n_tokens + writers["val"].n_tokens
    log.info("wrote %d tokens (%d train / %d val documents) in %.1f s", n, writers["train"].n_documents,
             writers["val"].n_documents, time.perf_counter() - t0)

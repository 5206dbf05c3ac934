"""TokenWindowDataset on hand-made shard sets: boundaries, loaders, samplers."""

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from attnlab.data import DataError, ShardIndex, TokenWindowDataset
from attnlab.data.shards import ShardWriter, dtype_for_vocab


def make_index(directory: Path, tokens: np.ndarray, shard_tokens: int = 1 << 20, vocab_size: int = 1000) -> Path:
    """A shard set holding exactly ``tokens`` (ids are positions mod vocab in these tests)."""
    dtype = dtype_for_vocab(vocab_size)
    writer = ShardWriter(directory, "train", dtype, shard_tokens)
    writer.write(tokens, n_documents=1)
    index = ShardIndex(split="train", dtype=dtype.name, vocab_size=vocab_size, n_tokens=writer.n_tokens,
                       n_documents=1, tokenizer_sha256="0" * 64, bos_id=1, eos_id=2, source="test", key="k",
                       shards=writer.close())
    index.save(directory / "train.json")
    return directory / "train.json"


def test_windows_are_shifted_by_one_and_cover_the_stream(tmp_path):
    seq_len, n = 8, 8 * 5 + 1  # exactly 5 windows
    ds = TokenWindowDataset(make_index(tmp_path, np.arange(n)), seq_len)
    assert len(ds) == 5
    for i in range(len(ds)):
        x, y = ds[i]
        assert x.dtype == y.dtype == torch.int64 and x.shape == y.shape == (seq_len,)
        assert x.tolist() == list(range(i * seq_len, (i + 1) * seq_len))
        assert y.tolist() == list(range(i * seq_len + 1, (i + 1) * seq_len + 1))
    assert ds[-1][1][-1].item() == n - 1  # the last window is complete and ends on the last token
    targets = torch.cat([ds[i][1] for i in range(len(ds))])
    assert targets.tolist() == list(range(1, n))  # every token but the first is a target exactly once


def test_incomplete_tail_is_dropped(tmp_path):
    ds = TokenWindowDataset(make_index(tmp_path, np.arange(8 * 5 + 1 + 7)), 8)
    assert len(ds) == 5
    with pytest.raises(IndexError, match="window 5 out of range for 5 windows"):
        ds[5]


def test_windows_stay_inside_shards(tmp_path):
    tokens = np.arange(3 * 1024 + 100) % 1000
    ds = TokenWindowDataset(make_index(tmp_path, tokens, shard_tokens=1024), 100)
    assert len(ds) == 3 * 10  # 10 windows per full shard; the 100-token last shard has none
    for shard, start in enumerate([0, 1024, 2048]):
        x, y = ds[shard * 10]
        assert x.tolist() == tokens[start:start + 100].tolist() and y.tolist() == tokens[start + 1:start + 101].tolist()


def test_uint32_shards_for_large_vocabularies(tmp_path):
    tokens = np.array([0, 70_000, 99_999, 65_536, 5], dtype=np.int64)
    path = make_index(tmp_path, tokens, vocab_size=100_000)
    assert ShardIndex.load(path).dtype == "uint32"
    x, y = TokenWindowDataset(path, 4)[0]
    assert x.tolist() == tokens[:4].tolist() and y.tolist() == tokens[1:].tolist()


def test_corpus_too_small_for_seq_len(tmp_path):
    path = make_index(tmp_path, np.arange(100))
    with pytest.raises(DataError, match=r"corpus too small for seq_len=128: .* has 100 tokens, a window needs 129"):
        TokenWindowDataset(path, 128)
    with pytest.raises(DataError, match="seq_len must be a positive int"):
        TokenWindowDataset(path, 0)


def test_missing_index_or_shard(tmp_path):
    with pytest.raises(FileNotFoundError, match="shard index not found"):
        TokenWindowDataset(tmp_path / "nope.json", 8)
    path = make_index(tmp_path, np.arange(100))
    (tmp_path / "train-00000.bin").unlink()
    with pytest.raises(DataError, match="train-00000.bin listed in .* is missing"):
        TokenWindowDataset(path, 8)


def test_pickle_drops_memmaps(tmp_path):
    ds = TokenWindowDataset(make_index(tmp_path, np.arange(1000)), 16)
    ds[0]  # opens the maps
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._maps is None
    assert torch.equal(clone[3][0], ds[3][0])


def test_multi_worker_dataloader_matches_single_process(tmp_path):
    ds = TokenWindowDataset(make_index(tmp_path, np.arange(20_000) % 1000), 32)

    def batches(workers):
        loader = DataLoader(ds, batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(0),
                            num_workers=workers)
        return [x for x, _ in loader]

    single, multi = batches(0), batches(2)
    assert len(single) == len(multi) and all(torch.equal(a, b) for a, b in zip(single, multi))


def test_distributed_sampler_gives_ranks_distinct_windows(tmp_path):
    ds = TokenWindowDataset(make_index(tmp_path, np.arange(64 * 101 + 1)), 64)  # 101 windows
    seen = []
    for rank in range(2):
        sampler = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=True, seed=0, drop_last=True)
        sampler.set_epoch(0)
        loader = DataLoader(ds, batch_size=5, sampler=sampler)
        seen.append({int(x[0]) for batch_x, _ in loader for x in batch_x})  # first token identifies a window
    assert len(seen[0]) == len(seen[1]) == 50
    assert not seen[0] & seen[1]


def test_malformed_index(tmp_path):
    (tmp_path / "train.json").write_text('{"format": "attnlab-shards/1", "shards": []}')
    with pytest.raises(DataError, match=r"train\.json: malformed shard index"):
        TokenWindowDataset(tmp_path / "train.json", 8)
    (tmp_path / "other.json").write_text('{"format": "something-else"}')
    with pytest.raises(DataError, match=r"unknown shard index format 'something-else'"):
        TokenWindowDataset(tmp_path / "other.json", 8)

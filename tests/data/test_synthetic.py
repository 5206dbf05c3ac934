"""The synthetic sources (data=mqar, data=induction): determinism, the scored positions, the
answers, option errors, and the stream order a resumed run continues."""

import numpy as np
import pytest
import torch

from attnlab.data import IGNORE_INDEX, DataConfig, DataError, PreparedData, SyntheticTask, prepare_data
from attnlab.training.datamodule import ResumableDataLoader, StreamSampler, TokenDataModule


def task(source: str, **options) -> SyntheticTask:
    return SyntheticTask.from_config(DataConfig(source=source, **{source: options}))


def batch(t: SyntheticTask, split: str, seed: int, seq_len: int, indices) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = zip(*t.dataset(split, seed, seq_len).__getitems__(list(indices)))
    return torch.stack(x), torch.stack(y)


MQAR = dict(vocab_size=64, num_pairs=6)
INDUCTION = dict(vocab_size=50, segment_len=7)


@pytest.mark.parametrize("source, options", [("mqar", MQAR), ("induction", INDUCTION)])
def test_examples_are_a_pure_function_of_seed_split_and_index(source, options):
    t = task(source, **options)
    x, y = batch(t, "train", 3, 40, range(8))
    assert x.dtype == y.dtype == torch.int64 and x.shape == y.shape == (8, 40)
    # Rebuilt from a fresh task and dataset, one at a time and out of order: the same examples.
    again = task(source, **options).dataset("train", 3, 40)
    for i in (5, 0, 7):
        xi, yi = again[i]
        assert torch.equal(xi, x[i]) and torch.equal(yi, y[i])
    assert not torch.equal(batch(t, "train", 4, 40, range(8))[0], x)  # another seed, another stream
    assert not torch.equal(batch(t, "val", 3, 40, range(8))[0], x)  # val: a disjoint stream
    assert not torch.equal(batch(t, "train", 3, 40, range(8, 16))[0], x)  # no repetition along the stream
    assert (y != IGNORE_INDEX).any(dim=1).all() and (x < t.vocab_size).all() and (x >= 0).all()


def test_mqar_scores_exactly_the_queries_and_their_answer_is_the_paired_value():
    n, vocab, seq_len = 6, 64, 40
    t = task("mqar", vocab_size=vocab, num_pairs=n, num_queries=4)
    x, y = batch(t, "val", 0, seq_len, range(64))
    for xs, ys in zip(x.tolist(), y.tolist()):
        keys, values = xs[0:2 * n:2], xs[1:2 * n:2]
        assert len(set(keys)) == n and all(k < vocab // 2 for k in keys)  # distinct keys, first half
        assert len(set(values)) == n and all(v >= vocab // 2 for v in values)  # distinct values, second half
        assert ys[:2 * n] == [IGNORE_INDEX] * 2 * n  # the context itself is not scored
        # The mask: the positions after the context that hold a key (the filler is never a key) ...
        queries = [i for i in range(2 * n, seq_len) if xs[i] < vocab // 2]
        scored = [i for i in range(seq_len) if ys[i] != IGNORE_INDEX]
        assert scored == queries and len(scored) == 4 and len({xs[i] for i in scored}) == 4
        # ... whose target is the value paired with that key in the context, which comes next.
        pairs = dict(zip(keys, values))
        assert all(ys[i] == pairs[xs[i]] == (xs[i + 1] if i + 1 < seq_len else ys[i]) for i in scored)


def test_mqar_queries_every_key_by_default():
    x, y = batch(task("mqar", vocab_size=32, num_pairs=8), "train", 1, 32, range(16))
    assert ((y != IGNORE_INDEX).sum(dim=1) == 8).all()


def test_induction_scores_the_copy_which_repeats_the_segment():
    length, seq_len = 7, 40
    x, y = batch(task("induction", **INDUCTION), "train", 0, seq_len, range(64))
    starts = set()
    for xs, ys in zip(x.tolist(), y.tolist()):
        scored = [i for i in range(seq_len) if ys[i] != IGNORE_INDEX]
        copy = scored[0]  # the copy's first token; its own target is the copy's second
        assert scored == list(range(copy, copy + length - 1))
        # The copy's last token may be the window's last target rather than an input.
        first, second = xs[copy - length:copy], [*xs[copy:copy + length - 1], ys[scored[-1]]]
        assert second == first and len(set(first)) == length  # the repeat equals the first copy; distinct
        assert [ys[i] for i in scored] == first[1:]
        starts.add(copy - length)
    assert len(starts) > 5  # the segment moves: no fixed offset answers the task


def test_induction_default_segment_fills_the_window():
    x, y = batch(task("induction", vocab_size=100), "train", 0, 31, range(4))
    assert ((y != IGNORE_INDEX).sum(dim=1) == 15).all()  # 32 tokens = 16 + copy of 16; 15 scored
    assert torch.equal(x[:, 16:], x[:, :15]) and torch.equal(y[:, -1], x[:, 15])


@pytest.mark.parametrize("kwargs, message", [
    (dict(source="mqar", mqar={"num_pairs": 0}),
     "data.mqar.num_pairs must be an int in [1, 128] (distinct keys and values, each from half of "
     "vocab_size=256), got 0"),
    (dict(source="mqar", mqar={"vocab_size": 16, "num_pairs": 9}), "data.mqar.num_pairs must be an int in [1, 8]"),
    (dict(source="mqar", mqar={"vocab_size": 2}), "data.mqar.vocab_size must be an int in [4, 2147483647], got 2"),
    (dict(source="mqar", mqar={"num_pairs": 4, "num_queries": 5}),
     "data.mqar.num_queries must be an int in [1, 4] (distinct keys of num_pairs=4; null: all of them), got 5"),
    (dict(source="mqar", mqar={"num_pairs": 2.5}), "data.mqar.num_pairs must be an int in [1, 128]"),
    (dict(source="mqar", mqar={"pairs": 4}), "unknown data.mqar keys ['pairs']; allowed: vocab_size, num_pairs, "
                                             "num_queries"),
    (dict(source="induction", induction={"segment_len": 1}), "data.induction.segment_len must be an int in [2, 256]"),
    (dict(source="induction", induction={"vocab_size": 10, "segment_len": 11}),
     "data.induction.segment_len must be an int in [2, 10] (distinct tokens of vocab_size=10"),
    (dict(source="induction", induction={"vocab_size": 1}), "data.induction.vocab_size must be an int in [2, "),
    (dict(source="mqar", paths=["x.txt"]), "only used with data.source='text' or 'hf', not with 'mqar'"),
])
def test_bad_options_name_the_setting_value_and_range(kwargs, message):
    with pytest.raises(DataError) as err:
        DataConfig(**kwargs)
    assert message in str(err.value)


@pytest.mark.parametrize("source, options, seq_len, message", [
    ("mqar", dict(num_pairs=16), 32, "data.mqar.num_pairs=16 with num_queries=16 needs trainer.seq_len >= 63 "
                                     "(2 tokens per pair and per query, minus 1); got trainer.seq_len=32, which "
                                     "allows data.mqar.num_pairs in [1, 8] with num_queries=null"),
    ("mqar", dict(num_pairs=8, num_queries=2), 16, "num_queries=2 needs trainer.seq_len >= 19"),
    ("induction", dict(segment_len=20), 32, "data.induction.segment_len=20 needs trainer.seq_len >= 39 (the "
                                            "segment and its copy, minus 1); got trainer.seq_len=32, which allows "
                                            "data.induction.segment_len in [2, 16]"),
    ("induction", dict(), 2, "trainer.seq_len=2 is too short for data=induction"),
])
def test_options_that_do_not_fit_the_sequence_fail_before_training(source, options, seq_len, message):
    prepared = prepare_data(DataConfig(source=source, **{source: options}))
    with pytest.raises(DataError) as err:
        TokenDataModule(prepared, seq_len=seq_len, batch_size=2, seed=0)
    assert message in str(err.value)


def test_prepare_data_returns_the_task_without_files(tmp_path):
    prepared = prepare_data(DataConfig(source="mqar", cache_dir=str(tmp_path / "cache"), mqar={"vocab_size": 40}))
    assert isinstance(prepared, PreparedData) and prepared.task is not None
    assert prepared.vocab_size == 40 and prepared.tokenizer_path is None and prepared.train is None
    assert prepared.source == "mqar(vocab_size=40, num_pairs=16, num_queries=None)"
    assert not (tmp_path / "cache").exists()
    with pytest.raises(DataError, match="synthetic task: it has no tokenizer"):
        prepared.tokenizer()


def test_a_resumed_loader_continues_the_same_stream():
    """What ``resume=auto`` relies on: a loader restored from (epoch, batches consumed) yields
    exactly the batches the uninterrupted loader goes on to yield, across an epoch boundary too."""
    dataset = task("mqar", **MQAR).dataset("train", 0, 24)

    def loader(consumed: list[int]) -> ResumableDataLoader:
        return ResumableDataLoader(dataset, 4, StreamSampler(len(dataset)), 0, lambda: consumed[0])

    straight = iter(loader([0]))
    seen = [next(straight) for _ in range(5)]
    resumed_loader = loader([0])
    resumed_loader.load_state_dict({"epoch": 0, "batches_consumed": 3})
    for expected, got in zip(seen[3:], resumed_loader):
        assert torch.equal(expected[0], got[0]) and torch.equal(expected[1], got[1])
    # Epoch 1 continues the stream where epoch 0 ended (nothing is repeated).
    sampler = StreamSampler(len(dataset))
    sampler.set_epoch(1)
    sampler.start = 2
    assert list(zip(range(3), sampler)) == [(0, len(dataset) + 2), (1, len(dataset) + 3), (2, len(dataset) + 4)]


def test_examples_do_not_depend_on_the_global_rng():
    t = task("induction", **INDUCTION)
    torch.manual_seed(1)
    np.random.seed(1)
    a = batch(t, "train", 0, 32, range(4))
    torch.manual_seed(2)
    np.random.seed(2)
    assert all(torch.equal(u, v) for u, v in zip(a, batch(t, "train", 0, 32, range(4))))


def test_ranks_read_interleaved_disjoint_parts_of_the_stream(monkeypatch):
    import attnlab.training.datamodule as datamodule
    from attnlab.training.datamodule import RankStrideSampler

    parts = []
    for rank in (0, 1):
        monkeypatch.setattr(datamodule, "_rank_and_world", lambda rank=rank: (rank, 2))
        parts.append(([i for _, i in zip(range(5), StreamSampler(100))],
                      [i for _, i in zip(range(5), RankStrideSampler(100))]))
        assert len(StreamSampler(100)) == len(RankStrideSampler(100)) == 50
    for train_or_val in (0, 1):
        rank0, rank1 = parts[0][train_or_val], parts[1][train_or_val]
        assert rank0 == [0, 2, 4, 6, 8] and rank1 == [1, 3, 5, 7, 9]


@pytest.mark.parametrize("source, options, seq_len, expected", [
    ("mqar", dict(vocab_size=64, num_pairs=8, num_queries=None), 32, "d7a8d15fe61e93b4"),  # experiment=recall's
    ("induction", INDUCTION, 40, "7c37586912941443"),
    ("induction", {}, 64, "6e026cf5a4b5425e"),
])
def test_the_streams_are_those_the_recall_reference_was_trained_on(source, options, seq_len, expected):
    """The first 64 training and validation examples of seeds 0 and 1, hashed: the digests were
    computed at the commit that trained reference/recall (74c4339), so a change to a generator, to
    how the stream is seeded, or to the scored positions shows here before a reference run drifts."""
    import hashlib

    t = task(source, **options)
    digest = hashlib.sha256()
    for split in ("train", "val"):
        for seed in (0, 1):
            dataset = t.dataset(split, seed, seq_len)
            for i in range(64):
                x, y = dataset[i]
                digest.update(x.numpy().tobytes())
                digest.update(y.numpy().tobytes())
    assert digest.hexdigest()[:16] == expected

"""The MAD tasks (data=icr, fuzzy_icr, noisy_icr, selective_copy, compression, memorization): the
layout of each, the scored positions and their answers, determinism, option errors, and the finite
training set (data.num_train_examples) for every synthetic task."""

import numpy as np
import pytest
import torch

from attnlab.data import IGNORE_INDEX, DataConfig, DataError, SyntheticTask
from attnlab.data.config import SYNTHETIC_SOURCES
from attnlab.training.datamodule import ResumableDataLoader, StreamSampler

MAD = {"icr": dict(vocab_size=16), "fuzzy_icr": dict(vocab_size=16, key_len=3, value_len=3),
       "noisy_icr": dict(vocab_size=32, noise_vocab_size=16, frac_noise=0.3),
       "selective_copy": dict(vocab_size=16, num_tokens_to_copy=8), "compression": dict(vocab_size=16),
       "memorization": dict(vocab_size=64, map_seed=7)}
SEQ_LEN = 40


def task(source: str, num_train_examples=None, **options) -> SyntheticTask:
    return SyntheticTask.from_config(DataConfig(source=source, num_train_examples=num_train_examples,
                                                **{source: options}))


def batch(t: SyntheticTask, split: str, seed: int, indices, seq_len: int = SEQ_LEN):
    x, y = zip(*t.dataset(split, seed, seq_len).__getitems__(list(indices)))
    return torch.stack(x), torch.stack(y)


def examples(source: str, n: int = 32, seq_len: int = SEQ_LEN):
    """Raw (tokens, scored) pairs: the answers where the inputs hide them."""
    t = task(source, **MAD[source])
    return t, [t.example(0, "val", i, seq_len) for i in range(n)]


@pytest.mark.parametrize("source", list(MAD))
def test_examples_are_a_pure_function_of_seed_split_and_index(source):
    t = task(source, **MAD[source])
    x, y = batch(t, "train", 3, range(8))
    assert x.shape == y.shape == (8, SEQ_LEN) and x.dtype == y.dtype == torch.int64
    again = task(source, **MAD[source]).dataset("train", 3, SEQ_LEN)
    for i in (5, 0, 7):
        assert all(torch.equal(a, b) for a, b in zip(again[i], (x[i], y[i])))
    assert not torch.equal(batch(t, "train", 4, range(8))[0], x)  # another seed
    assert not torch.equal(batch(t, "val", 3, range(8))[0], x)  # another split
    assert not torch.equal(batch(t, "train", 3, range(8, 16))[0], x)  # another index
    assert (y != IGNORE_INDEX).any(dim=1).all()
    assert (x >= 0).all() and (x < t.vocab_size).all() and (y[y != IGNORE_INDEX] < t.vocab_size).all()
    assert 0 < t.settings()["chance_acc"] < 1 and t.settings()["task"] == source


@pytest.mark.parametrize("source", list(MAD))
def test_targets_are_the_next_tokens_where_scored_and_hidden_answers_are_not_inputs(source):
    t, raw = examples(source, 8)
    x, y = batch(t, "val", 0, range(8))
    for (tokens, scored), xs, ys in zip(raw, x, y):
        assert torch.equal(ys, torch.from_numpy(np.where(scored, tokens[1:], IGNORE_INDEX)))
        hidden = np.zeros(SEQ_LEN, dtype=bool)
        hidden[1:] = scored[:-1]
        if t.answer_input is None:
            assert not hidden.any() or torch.equal(xs, torch.from_numpy(tokens[:-1]))
        else:
            assert torch.equal(xs, torch.from_numpy(np.where(hidden, t.answer_input, tokens[:-1])))


@pytest.mark.parametrize("source", ["icr", "noisy_icr"])
def test_icr_scores_each_repeated_key_and_its_answer_is_the_value_seen_before(source):
    t, raw = examples(source, 64)
    symbols = t.options.vocab_size - getattr(t.options, "noise_vocab_size", 0)
    noise_pairs = 0
    for tokens, scored in raw:
        seen: dict[int, int] = {}
        for j in range((SEQ_LEN + 1) // 2):
            key, value = tokens[2 * j], tokens[2 * j + 1]
            assert not scored[2 * j + 1]  # only a key's position is scored (its target: the value)
            if key >= symbols:  # a noise pair: both noise tokens, never scored, no binding
                assert value >= symbols and not scored[2 * j]
                noise_pairs += 1
                continue
            assert key < symbols // 2 <= value < symbols
            assert scored[2 * j] == (key in seen) and seen.setdefault(key, value) == value
        assert scored[2 * ((SEQ_LEN + 1) // 2 - 1)]  # the last pair asks
    assert (noise_pairs > 0) == (source == "noisy_icr")


def test_noisy_icr_noise_share_follows_frac_noise():
    for frac in (0.0, 0.5):
        t = task("noisy_icr", vocab_size=32, noise_vocab_size=16, frac_noise=frac)
        tokens = np.stack([t.example(0, "train", i, 255)[0] for i in range(64)])
        share = (tokens[:, 0:254:2] >= 16).mean()
        assert abs(share - frac) < 0.05


def test_fuzzy_icr_values_of_repeated_keys_are_scored_whole():
    t, raw = examples("fuzzy_icr", 64)
    pad, n_keys = t.options.vocab_size - 1, (t.options.vocab_size - 1) // 2
    key_runs = set()
    for tokens, scored in raw:
        start = int(np.argmax(tokens != pad))
        assert (tokens[:start] == pad).all() and not scored[:max(start - 1, 0)].any()
        # Key tokens and value tokens alternate run by run, so the runs are the pairs exactly.
        body, runs, i = tokens[start:].tolist(), [], 0
        while i < len(body):
            j = i
            while j < len(body) and (body[j] < n_keys) == (body[i] < n_keys):
                j += 1
            runs.append((start + i, body[i:j]))
            i = j
        assert body[0] < n_keys and len(runs) % 2 == 0
        seen: dict[tuple, tuple] = {}
        expected = np.zeros(SEQ_LEN, dtype=bool)
        for (_, key), (at, value) in zip(runs[0::2], runs[1::2]):
            key, value = tuple(key), tuple(value)
            assert len(set(key)) == len(key) and len(set(value)) == len(value)
            key_runs.add(len(key))
            if key in seen:
                assert seen[key] == value
                expected[at - 1:at - 1 + len(value)] = True
            seen.setdefault(key, value)
            assert len(key) <= t.options.key_len and len(value) <= t.options.value_len
        assert np.array_equal(scored, expected) and scored[-1]  # the last pair asks: its value ends the window
    assert key_runs >= {1, 2, 3}


def test_selective_copy_scores_the_tokens_among_blanks_in_order():
    t, raw = examples("selective_copy", 64)
    n, vocab = t.options.num_tokens_to_copy, t.options.vocab_size
    region = SEQ_LEN - n
    positions = set()
    for tokens, scored in raw:
        assert tokens[region] == vocab - 1 and (tokens[:region] != vocab - 1).all()
        data_at = np.flatnonzero(tokens[:region] != vocab - 2)
        assert len(data_at) == n
        positions.update(data_at.tolist())
        assert np.flatnonzero(scored).tolist() == list(range(region, SEQ_LEN))
        assert tokens[region + 1:].tolist() == tokens[data_at].tolist()
    assert len(positions) > region // 2  # the tokens move: their places are to be found
    x, y = batch(t, "val", 0, range(4))
    assert (x[:, region + 1:] == vocab - 2).all()  # the answers' inputs are blanks


def test_compression_repeats_the_tokens_after_the_compression_token():
    for seq_len in (40, 41):
        t = task("compression", vocab_size=16)
        tokens, scored = t.example(0, "train", 0, seq_len)
        n = seq_len // 2
        assert tokens[n] == 15 and (tokens[:n] < 15).all() and tokens[n + 1:2 * n + 1].tolist() == tokens[:n].tolist()
        assert np.flatnonzero(scored).tolist() == list(range(n, 2 * n))
        x, _ = batch(t, "train", 0, [0], seq_len)
        assert (x[0, n:] == 15).all()


def test_memorization_asks_a_fixed_map_shared_by_splits_and_seeds():
    t = task("memorization", **MAD["memorization"])
    n_keys = (64 - 1) // 2
    facts = t.value_map
    assert len(facts) == n_keys and len(set(facts.tolist())) == n_keys and (facts >= n_keys).all()
    assert (facts < 63).all()
    for split, seed in (("train", 0), ("train", 5), ("val", 0)):
        x, y = batch(t, split, seed, range(16))
        assert (x[:, 1::2] == 63).all()  # the insert token: the values are never inputs
        assert torch.equal(y[:, 0::2], torch.from_numpy(facts)[x[:, 0::2]]) and (y[:, 1::2] == IGNORE_INDEX).all()
    assert np.array_equal(task("memorization", **MAD["memorization"]).value_map, facts)
    assert not np.array_equal(task("memorization", vocab_size=64, map_seed=8).value_map, facts)
    assert t.chance_acc == 1 / (63 - n_keys)


@pytest.mark.parametrize("source", SYNTHETIC_SOURCES)
def test_num_train_examples_cycles_the_training_set_of_every_task(source):
    options = MAD.get(source, {"mqar": dict(num_pairs=4)}.get(source, {}))
    t = task(source, num_train_examples=5, **options)
    x, y = batch(t, "train", 1, range(15), 32)
    assert torch.equal(x[:5], x[5:10]) and torch.equal(x[:5], x[10:]) and torch.equal(y[:5], y[10:])
    endless = task(source, **options)
    assert torch.equal(batch(endless, "train", 1, range(5), 32)[0], x[:5])  # the stream's first 5
    assert not torch.equal(batch(t, "val", 1, range(5, 10), 32)[0], batch(t, "val", 1, range(5), 32)[0])
    assert t.settings()["num_train_examples"] == 5 and "num_train_examples=5" in t.description


def test_a_resumed_cycled_stream_continues_where_it_stopped():
    ds = task("icr", num_train_examples=6, vocab_size=16).dataset("train", 0, 32)
    first = ResumableDataLoader(ds, 4, StreamSampler(len(ds)), 0, lambda: 0)
    full = [x for _, (x, _) in zip(range(4), first)]
    resumed = ResumableDataLoader(ds, 4, StreamSampler(len(ds)), 0, lambda: 0)
    resumed.load_state_dict({"epoch": 0, "batches_consumed": 2})
    assert all(torch.equal(a, b) for a, (b, _) in zip(full[2:], resumed))
    assert torch.equal(torch.cat(full)[6:12], torch.cat(full)[:6])


@pytest.mark.parametrize("source, options, message", [
    ("icr", dict(vocab_size=1), "data.icr.vocab_size must be an int in [2, "),
    ("noisy_icr", dict(vocab_size=32, noise_vocab_size=31),
     "data.noisy_icr.noise_vocab_size must be an int in [1, 30]"),
    ("noisy_icr", dict(frac_noise=1.0), "data.noisy_icr.frac_noise must be a number in [0, 1), got 1.0"),
    ("fuzzy_icr", dict(vocab_size=16, key_len=8), "data.fuzzy_icr.key_len must be an int in [1, 7]"),
    ("fuzzy_icr", dict(vocab_size=16, value_len=0), "data.fuzzy_icr.value_len must be an int in [1, 8]"),
    ("selective_copy", dict(num_tokens_to_copy=0), "data.selective_copy.num_tokens_to_copy must be an int in [1, "),
    ("compression", dict(vocab_size=1), "data.compression.vocab_size must be an int in [2, "),
    ("memorization", dict(map_seed="a"), "data.memorization.map_seed must be an int, got 'a'"),
    ("memorization", dict(colour=1), "unknown data.memorization keys ['colour']"),
])
def test_bad_options_name_the_setting_value_and_range(source, options, message):
    with pytest.raises(DataError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        DataConfig(source=source, **{source: options})


@pytest.mark.parametrize("source, options, seq_len, message", [
    ("selective_copy", dict(num_tokens_to_copy=16), 31, "needs trainer.seq_len >= 32"),
    ("fuzzy_icr", dict(key_len=3, value_len=3), 10, "needs trainer.seq_len >= 11"),
    ("icr", {}, 2, "trainer.seq_len=2 is too short"),
])
def test_options_that_do_not_fit_seq_len_fail_before_training(source, options, seq_len, message):
    with pytest.raises(DataError, match=message):
        task(source, **options).dataset("train", 0, seq_len)


@pytest.mark.parametrize("value, message", [(0, "data.num_train_examples must be an int in \\[1, "),
                                            (2.5, "data.num_train_examples must be an int")])
def test_bad_num_train_examples(value, message):
    with pytest.raises(DataError, match=message):
        DataConfig(source="icr", num_train_examples=value)
    with pytest.raises(DataError, match="only used with a synthetic source"):
        DataConfig(source="demo", num_train_examples=10)

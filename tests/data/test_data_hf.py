"""The opt-in ``hf`` source, offline: local jsonl/parquet loaded through ``datasets``."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from attnlab.data import DataConfig, DataError, ShardIndex, TokenizerConfig, prepare_data

datasets = pytest.importorskip("datasets")

TINY_TOKENIZER = TokenizerConfig(vocab_size=350, model_type="bpe", input_sentence_size=0)
DOCS = [f"Document {i}: the quick brown fox jumps over the lazy dog. 猫が{i}匹います。" for i in range(60)]


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    # datasets reads HF_*_OFFLINE at import time; flip its flags so no test can try the network
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def hf_config(tmp_path, **kwargs):
    return DataConfig(source="hf", val_fraction=0.2, tokenizer=TINY_TOKENIZER, cache_dir=str(tmp_path / "cache"),
                      **kwargs)


def test_hf_builders_on_local_files_match_the_text_source(tmp_path):
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"body": d}) + "\n" for d in DOCS))
    pq.write_table(pa.table({"body": DOCS}), tmp_path / "c.parquet")
    via_json = prepare_data(hf_config(tmp_path, hf_name="json", paths=[str(tmp_path / "c.jsonl")], text_field="body"))
    via_parquet = prepare_data(hf_config(tmp_path, hf_name="parquet", paths=[str(tmp_path / "c.parquet")],
                                         text_field="body"))
    via_text = prepare_data(DataConfig(source="text", paths=[str(tmp_path / "c.jsonl")], text_field="body",
                                       val_fraction=0.2, tokenizer=TINY_TOKENIZER,
                                       cache_dir=str(tmp_path / "cache")))
    tokens = [ShardIndex.load(p.train).read_all() for p in (via_json, via_parquet, via_text)]
    assert tokens[0].size > 0
    assert np.array_equal(tokens[0], tokens[1]) and np.array_equal(tokens[0], tokens[2])
    assert via_json.source.startswith("hf json")


def test_hf_local_dataset_directory_and_rebuild_on_change(tmp_path):
    data = tmp_path / "ds"
    data.mkdir()
    pq.write_table(pa.table({"text": DOCS}), data / "train.parquet")
    first = prepare_data(hf_config(tmp_path, hf_name=str(data)))
    assert prepare_data(hf_config(tmp_path, hf_name=str(data))) == first
    pq.write_table(pa.table({"text": DOCS[:-5]}), data / "train.parquet")
    assert prepare_data(hf_config(tmp_path, hf_name=str(data))).train != first.train


def test_hf_missing_text_field(tmp_path):
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"body": d}) + "\n" for d in DOCS))
    with pytest.raises(DataError, match=r"hf dataset 'json': row 0: no field 'text' \(present: \['body'\]\)"):
        prepare_data(hf_config(tmp_path, hf_name="json", paths=[str(tmp_path / "c.jsonl")]))


def test_hf_unknown_dataset_offline_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="cannot load hf dataset 'no-such-user/no-such-dataset'"):
        prepare_data(hf_config(tmp_path, hf_name="no-such-user/no-such-dataset"))

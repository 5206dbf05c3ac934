"""DataConfig / TokenizerConfig validation and check_vocab_fits: one clear error per bad value."""

import pytest

from attnlab.data import DataConfig, DataError, TokenizerConfig, check_vocab_fits


def test_defaults_are_the_demo_setting():
    cfg = DataConfig()
    assert cfg.source == "demo" and cfg.cache_dir == "data/cache"
    assert cfg.tokenizer.vocab_size == 8000 and cfg.tokenizer.byte_fallback is True


def test_an_encoding_is_kept_under_its_codec_name():
    assert DataConfig(encoding="UTF8").encoding == "utf-8"  # the demo source takes it: it is utf-8
    assert DataConfig(source="text", paths=["x"], encoding="SJIS").encoding == "shift_jis"


@pytest.mark.parametrize("kwargs, message", [
    (dict(source="web"), "unknown data.source 'web'; allowed: demo, text, hf"),
    (dict(source="text"), "needs data.paths"),
    (dict(source="demo", paths=["x.txt"]), "only used with data.source='text' or 'hf'"),
    (dict(source="hf"), "needs data.hf_name"),
    (dict(val_fraction=0.0), "val_fraction must be in (0, 1), got 0.0"),
    (dict(val_fraction=1.5), "val_fraction must be in (0, 1), got 1.5"),
    (dict(on_decode_error="ignore"), "unknown data.on_decode_error 'ignore'; allowed: fail, replace"),
    (dict(source="text", paths=["x"], encoding="sjis-win"),
     "unknown data.encoding 'sjis-win'; Python's text codec names, e.g. utf-8, cp932 (Windows Shift-JIS), "
     "shift_jis, euc_jp"),
    (dict(source="text", paths=["x"], encoding="utf-16"),
     "data.encoding='utf-16' does not write a newline as the byte \\n, so its files cannot be read line by line; "
     "convert them to UTF-8 (iconv -f utf-16 -t UTF-8)"),
    (dict(encoding="cp932"), "data.encoding='cp932' is only used with data.source='text' (files of .txt or .jsonl), "
                             "not with 'demo'"),
    (dict(source="text", paths=["x"], encoding="hex"), "unknown data.encoding 'hex'; Python's text codec names"),
    (dict(text_field=""), "text_field must be a non-empty string"),
    (dict(split_seed="0"), "split_seed must be an int"),
    (dict(shard_tokens=10), "shard_tokens must be an int >= 1024, got 10"),
    (dict(tokenizer={"vocab_sise": 500}), "unknown data.tokenizer keys ['vocab_sise']"),
])
def test_bad_data_config_names_value_and_allowed(kwargs, message):
    with pytest.raises(DataError) as e:
        DataConfig(**kwargs)
    assert message in str(e.value)


@pytest.mark.parametrize("kwargs, message", [
    (dict(vocab_size=100), "vocab_size must be an int >= 261"),
    (dict(model_type="wordpiece"), "unknown data.tokenizer.model_type 'wordpiece'; allowed: unigram, bpe"),
    (dict(byte_fallback=False), "byte_fallback must be True"),
    (dict(character_coverage=0.5), "character_coverage must be in [0.98, 1.0]"),
    (dict(input_sentence_size=-1), "input_sentence_size must be an int >= 0"),
])
def test_bad_tokenizer_config(kwargs, message):
    with pytest.raises(DataError) as e:
        TokenizerConfig(**kwargs)
    assert message in str(e.value)


def test_tokenizer_section_from_a_mapping_and_single_path_string():
    cfg = DataConfig(source="text", paths="corpus/*.txt", tokenizer={"vocab_size": 500, "model_type": "bpe"})
    assert cfg.paths == ["corpus/*.txt"]
    assert cfg.tokenizer == TokenizerConfig(vocab_size=500, model_type="bpe")


def test_check_vocab_fits():
    check_vocab_fits(8000, 8000)
    check_vocab_fits(8000, 8064)
    with pytest.raises(ValueError, match=r"tokenizer vocab_size 8000 exceeds model vocab_size 4096.*8000.*8000"):
        check_vocab_fits(8000, 4096)
    with pytest.raises(ValueError, match="multiple of 64: 35008"):
        check_vocab_fits(35000, 32000)

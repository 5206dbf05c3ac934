"""prepare_data end to end on small corpora: tokenizer, shards, split, cache, bad input.

Corpora are a few dozen real documents from the bundled demo corpus written to
tmp_path; tokenizers use tiny vocabularies so that every test runs in about a second.
"""

import gzip
import json
import logging
import lzma
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import attnlab.data.prepare as prepare_mod
from attnlab.data import (DataConfig, DataError, DataFileNotFoundError, ShardIndex, Tokenizer, TokenizerConfig,
                          TokenWindowDataset, is_val_document, prepare_data)
from attnlab.data.sources import DEMO_CORPUS

TINY_TOKENIZER = TokenizerConfig(vocab_size=800, model_type="bpe", character_coverage=0.98, input_sentence_size=0)


def demo_docs(n_per_lang: int = 25, max_chars: int = 1500) -> list[str]:
    """Real ja and en documents (truncated), alternating languages."""
    by_lang: dict[str, list[str]] = {"ja": [], "en": []}
    with lzma.open(DEMO_CORPUS, "rt", encoding="utf-8") as f:
        for line in f:
            doc = json.loads(line)
            if len(by_lang[doc["lang"]]) < n_per_lang:
                by_lang[doc["lang"]].append(doc["text"][:max_chars])
            if all(len(v) == n_per_lang for v in by_lang.values()):
                break
    return [d for pair in zip(by_lang["ja"], by_lang["en"]) for d in pair]


@pytest.fixture(scope="module")
def docs() -> list[str]:
    return demo_docs()


def write_jsonl(path: Path, docs: list[str], field: str = "text") -> Path:
    path.write_text("".join(json.dumps({field: d, "id": i}, ensure_ascii=False) + "\n" for i, d in enumerate(docs)),
                    encoding="utf-8")
    return path


def text_config(tmp_path: Path, *paths: str, **kwargs) -> DataConfig:
    kwargs = {"val_fraction": 0.2, "tokenizer": TINY_TOKENIZER, "cache_dir": str(tmp_path / "cache"), **kwargs}
    return DataConfig(source="text", paths=list(paths), **kwargs)


def documents_in(index_path: Path, tok: Tokenizer) -> list[str]:
    """Decode a shard set back into documents, checking the <s> ... </s> framing."""
    tokens = ShardIndex.load(index_path).read_all().tolist()
    docs, i = [], 0
    while i < len(tokens):
        assert tokens[i] == tok.bos_id
        end = tokens.index(tok.eos_id, i)
        docs.append(tok.decode(tokens[i + 1:end]))
        i = end + 1
    return docs


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, docs):
    tmp = tmp_path_factory.mktemp("prepared")
    write_jsonl(tmp / "corpus.jsonl", docs)
    return prepare_data(text_config(tmp, str(tmp / "corpus.jsonl")))


# --------------------------------------------------------------------------- tokenizer


def test_round_trip_japanese_and_english(prepared):
    tok = prepared.tokenizer()
    for text in ["東京都は日本の首都です。", "彼女が子供の頃に住んでいた、海の見える小さな町は、",
                 "To be, or not to be: that is the question.\n\n  Indented\tline  ", "mixed 日本語 and English 123"]:
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert tok.unk_id not in ids


@pytest.mark.parametrize("rare", ["𠮷", "龘", "🦜"])
def test_byte_fallback_on_rare_characters(prepared, rare):
    tok = prepared.tokenizer()
    ids = tok.encode(f"これは{rare}です")
    assert tok.decode(ids) == f"これは{rare}です"
    assert tok.unk_id not in ids
    byte_ids = [i for i in ids if tok.is_byte(i)]
    assert len(byte_ids) == len(rare.encode("utf-8"))  # one token per UTF-8 byte
    assert [tok.id_to_piece(i) for i in byte_ids] == [f"<0x{b:02X}>" for b in rare.encode("utf-8")]


def test_special_tokens_and_bos_eos(prepared):
    tok = prepared.tokenizer()
    assert (tok.unk_id, tok.bos_id, tok.eos_id, tok.pad_id) == (0, 1, 2, 3)
    assert tok.vocab_size == prepared.vocab_size == 800
    ids = tok.encode("hello", bos=True, eos=True)
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id and tok.decode(ids) == "hello"


def test_tokenizer_vocab_too_large_for_corpus_is_a_clear_error(tmp_path):
    write_jsonl(tmp_path / "c.jsonl", ["short text"] * 2 + ["other words here"] * 8)
    cfg = text_config(tmp_path, str(tmp_path / "c.jsonl"), val_fraction=0.01,
                      tokenizer=TokenizerConfig(vocab_size=5000, model_type="bpe"))
    with pytest.raises(DataError, match=r"tokenizer training failed \(vocab_size=5000.*set "
                                        r"data\.tokenizer\.vocab_size <= \d+ or add text"):
        prepare_data(cfg)
    assert not list((tmp_path / "cache" / "tokenizers").iterdir())  # nothing half-written
    cfg = text_config(tmp_path, str(tmp_path / "c.jsonl"), val_fraction=0.01,
                      tokenizer=TokenizerConfig(vocab_size=261, model_type="bpe"))
    with pytest.raises(DataError, match=r"the corpus needs \d+ pieces .* raise data\.tokenizer\.vocab_size "
                                        r"or lower data\.tokenizer\.character_cov"):
        prepare_data(cfg)


# --------------------------------------------------------------------------- shards and split


def test_shards_round_trip_to_the_original_documents(prepared, docs):
    tok = prepared.tokenizer()
    train, val = documents_in(prepared.train, tok), documents_in(prepared.val, tok)
    expected_val = [d for d in docs if is_val_document(d, 0, 0.2)]
    assert val == expected_val  # same documents, in corpus order
    assert train == [d for d in docs if not is_val_document(d, 0, 0.2)]
    index = ShardIndex.load(prepared.train)
    assert index.dtype == "uint16" and index.tokenizer_sha256 == tok.sha256
    assert index.n_documents == len(train) and index.n_tokens == prepared.train_tokens
    index.verify_checksums()


def test_split_is_deterministic_disjoint_and_seeded(docs):
    split = [is_val_document(d, 0, 0.2) for d in docs]
    assert split == [is_val_document(d, 0, 0.2) for d in docs]
    assert 0 < sum(split) < len(docs)
    assert split != [is_val_document(d, 1, 0.2) for d in docs]  # another seed, another split
    many = [f"document {i}" for i in range(4000)]
    share = sum(is_val_document(d, 0, 0.05) for d in many) / len(many)
    assert 0.04 < share < 0.06


def test_split_disjoint_in_shards(prepared):
    tok = prepared.tokenizer()
    assert not set(documents_in(prepared.train, tok)) & set(documents_in(prepared.val, tok))


def test_multi_shard_sets_and_uint16(tmp_path, docs):
    write_jsonl(tmp_path / "c.jsonl", docs)
    p = prepare_data(text_config(tmp_path, str(tmp_path / "c.jsonl"), shard_tokens=1024))
    index = ShardIndex.load(p.train)
    assert len(index.shards) > 3 and all(s.n_tokens <= 1024 for s in index.shards)
    assert documents_in(p.train, p.tokenizer()) == [d for d in docs if not is_val_document(d, 0, 0.2)]


# --------------------------------------------------------------------------- cache


def test_cache_is_reused_and_rebuilt_when_the_source_changes(tmp_path, docs, monkeypatch):
    corpus = write_jsonl(tmp_path / "c.jsonl", docs)
    cfg = text_config(tmp_path, str(corpus))
    first = prepare_data(cfg)

    calls = []
    for name in ("_train", "_encode"):
        real = getattr(prepare_mod, name)
        monkeypatch.setattr(prepare_mod, name, lambda *a, _real=real, _n=name: (calls.append(_n), _real(*a))[1])
    assert prepare_data(cfg) == first and calls == []  # idempotent: nothing rebuilt

    write_jsonl(corpus, docs[:-1] + ["a new closing document."])
    second = prepare_data(cfg)
    assert calls == ["_train", "_encode"]
    assert second.train != first.train and second.tokenizer_path != first.tokenizer_path

    calls.clear()  # a different tokenizer option: new tokenizer and shards, same source
    other = TokenizerConfig(vocab_size=820, model_type="bpe", character_coverage=0.98)
    third = prepare_data(text_config(tmp_path, str(corpus), tokenizer=other))
    assert calls == ["_train", "_encode"] and third.vocab_size == 820


def test_a_crash_leaves_no_half_written_cache(tmp_path, docs, monkeypatch):
    write_jsonl(tmp_path / "c.jsonl", docs)
    cfg = text_config(tmp_path, str(tmp_path / "c.jsonl"))

    def crash(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(prepare_mod.ShardIndex, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        prepare_data(cfg)
    assert os.listdir(tmp_path / "cache" / "shards") == []  # no partial dir, no temp dir
    monkeypatch.undo()
    p = prepare_data(cfg)  # the tokenizer was complete and is reused; shards are built
    assert ShardIndex.load(p.train).n_tokens > 0


def test_truncated_shard_is_detected(tmp_path, docs):
    write_jsonl(tmp_path / "c.jsonl", docs)
    p = prepare_data(text_config(tmp_path, str(tmp_path / "c.jsonl")))
    shard = ShardIndex.load(p.train).shard_paths()[0]
    with open(shard, "r+b") as f:
        f.truncate(shard.stat().st_size - 2)
    with pytest.raises(DataError, match=r"train-00000.bin is \d+ bytes but its index says \d+.*truncated"):
        TokenWindowDataset(p.train, 16)
    # prepare_data notices the damaged cache and rebuilds it
    again = prepare_data(text_config(tmp_path, str(tmp_path / "c.jsonl")))
    assert len(TokenWindowDataset(again.train, 16)) > 0


# --------------------------------------------------------------------------- sources and bad input


def test_txt_parquet_and_compressed_jsonl_give_the_same_tokens(tmp_path, docs):
    # .txt documents are blocks between blank lines: compare with paragraphs as rows
    paragraphs = [p.strip() for d in docs for p in d.split("\n\n") if p.strip()]
    half = len(paragraphs) // 2
    (tmp_path / "txt").mkdir()
    (tmp_path / "txt" / "a.txt").write_text("\n\n".join(paragraphs[:half]) + "\n", encoding="utf-8")
    (tmp_path / "txt" / "b.txt").write_text("\n\n\n".join(paragraphs[half:]), encoding="utf-8")
    pq.write_table(pa.table({"text": paragraphs, "n": list(range(len(paragraphs)))}), tmp_path / "c.parquet")
    with gzip.open(tmp_path / "c.jsonl.gz", "wt", encoding="utf-8") as f:
        f.writelines(json.dumps({"text": p}) + "\n" for p in paragraphs)
    results = [prepare_data(text_config(tmp_path, p)) for p in
               (str(tmp_path / "txt" / "*.txt"), str(tmp_path / "c.parquet"), str(tmp_path / "c.jsonl.gz"))]
    tokens = [ShardIndex.load(r.train).read_all() for r in results]
    assert np.array_equal(tokens[0], tokens[1]) and np.array_equal(tokens[0], tokens[2])
    assert documents_in(results[0].train, results[0].tokenizer())[:3] == \
        [p for p in paragraphs if not is_val_document(p, 0, 0.2)][:3]


def test_missing_files(tmp_path):
    with pytest.raises(DataFileNotFoundError, match=r"data.paths: no files match '.*nowhere/\*\.jsonl' \(working "
                                                    r"directory .*\); give globs of \.txt, .*\.parquet files"):
        prepare_data(text_config(tmp_path, str(tmp_path / "nowhere" / "*.jsonl")))
    assert not (tmp_path / "cache" / "tokenizers").exists()


def test_an_empty_file_among_the_matches_is_named(tmp_path, caplog):
    from attnlab.data.sources import expand_paths

    (tmp_path / "a.txt").write_text("some text\n")
    (tmp_path / "b.txt").write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="attnlab.data.sources"):
        assert [p.name for p in expand_paths([str(tmp_path / "*.txt")])] == ["a.txt", "b.txt"]
    assert f"data.paths: 1 empty file(s), which add no text: {(tmp_path / 'b.txt').resolve()}" in caplog.text


def test_unsupported_file_type(tmp_path):
    (tmp_path / "c.csv").write_text("text\nhello\n")
    with pytest.raises(DataError, match=r"unsupported file type .*c\.csv.*allowed suffixes: \.txt"):
        prepare_data(text_config(tmp_path, str(tmp_path / "c.csv")))


def test_empty_corpus(tmp_path):
    (tmp_path / "empty.jsonl").write_text('{"text": ""}\n{"text": "   "}\n\n')
    with pytest.raises(DataError, match="corpus is empty"):
        prepare_data(text_config(tmp_path, str(tmp_path / "empty.jsonl")))
    assert list((tmp_path / "cache" / "tokenizers").iterdir()) == []


def test_missing_text_field_jsonl_and_parquet(tmp_path, docs):
    write_jsonl(tmp_path / "c.jsonl", docs, field="body")
    with pytest.raises(DataError, match=r"c\.jsonl: line 1: no field 'text' \(present: \['body', 'id'\]\)"):
        prepare_data(text_config(tmp_path, str(tmp_path / "c.jsonl")))
    pq.write_table(pa.table({"body": docs}), tmp_path / "c.parquet")
    with pytest.raises(DataError, match=r"c\.parquet: no column 'text' \(columns: \['body'\]\)"):
        prepare_data(text_config(tmp_path, str(tmp_path / "c.parquet")))
    # the right field name works
    assert prepare_data(text_config(tmp_path, str(tmp_path / "c.jsonl"), text_field="body")).train_tokens > 0


def test_a_utf16_file_and_a_bad_json_line_are_named_for_what_they_are(tmp_path, docs):
    notepad = tmp_path / "notepad.txt"
    notepad.write_bytes("\n\n".join(docs).encode("utf-16"))  # with its byte-order mark, as Notepad saves
    with pytest.raises(DataError, match=r"notepad\.txt starts with a UTF-16 byte-order mark .*convert it to UTF-8 "
                                        r"\(iconv -f UTF-16 -t UTF-8\)"):
        prepare_data(text_config(tmp_path, str(notepad)))
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "ok"}\n{"text": "tab\tinside"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"broken\.jsonl: line 2: not valid JSON \(Invalid control character at "
                                        r"column 14\)"):
        prepare_data(text_config(tmp_path, str(broken)))


def test_undecodable_bytes_fail_or_replace_counted_once_per_file(tmp_path, docs, caplog):
    bad = tmp_path / "bad.txt"
    good = "\n\n".join(docs).encode("utf-8")
    bad.write_bytes(good + b"\nbroken \xff\xfe byte\n\nand \xff again")
    with pytest.raises(DataError, match=r"bad\.txt: line \d+: invalid utf-8 at byte \d+.*on_decode_error=replace"):
        prepare_data(text_config(tmp_path, str(bad)))
    with caplog.at_level(logging.WARNING, logger="attnlab.data.sources"):
        p = prepare_data(text_config(tmp_path, str(bad), on_decode_error="replace"))
    tok = p.tokenizer()
    texts = documents_in(p.train, tok) + documents_in(p.val, tok)
    assert sum(t.endswith("\nbroken \ufffd\ufffd byte") for t in texts) == 1
    lines = good.count(b"\n") + 4
    warnings = [r.getMessage() for r in caplog.records if "replaced by U+FFFD" in r.getMessage()]
    assert warnings == [f"{bad}: 2 of {lines} line(s) had bytes invalid in utf-8, replaced by U+FFFD "
                        f"(first: line {lines - 2})"]


def test_undecodable_jsonl_line_names_file_and_line(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_bytes(b'{"text": "fine"}\n{"text": "bad \xc3("}\n')
    with pytest.raises(DataError, match=r"c\.jsonl: line 2: invalid utf-8"):
        prepare_data(text_config(tmp_path, str(path)))


def test_japanese_files_in_shift_jis_or_euc_jp_are_read_with_data_encoding(tmp_path, docs):
    """The error names the encoding that reads the file; with it the documents are the UTF-8 ones."""
    japanese = [d for d in docs if any("\u3040" <= c <= "\u30ff" for c in d) and _encodable(d, "cp932", "euc_jp")]
    assert len(japanese) >= 10
    (tmp_path / "utf8").mkdir()
    reference = write_jsonl(tmp_path / "utf8" / "c.jsonl", japanese)
    expected = ShardIndex.load(prepare_data(text_config(tmp_path, str(reference))).train).read_all()
    for encoding in ("cp932", "euc_jp"):
        path = tmp_path / encoding / "c.jsonl"
        path.parent.mkdir()
        path.write_bytes(reference.read_text(encoding="utf-8").encode(encoding))
        with pytest.raises(DataError, match=rf"c\.jsonl: line 1: invalid utf-8 at byte \d+ .*; set data.encoding="
                                            rf"{encoding} if the file is in that encoding, fix the file, or set "
                                            r"data.on_decode_error=replace"):
            prepare_data(text_config(tmp_path, str(path)))
        read = prepare_data(text_config(tmp_path, str(path), encoding=encoding))
        assert np.array_equal(ShardIndex.load(read.train).read_all(), expected), encoding


def _encodable(text: str, *encodings: str) -> bool:
    try:
        for encoding in encodings:
            text.encode(encoding)
    except UnicodeEncodeError:
        return False
    return True


def test_a_byte_order_mark_and_crlf_line_endings_give_the_same_tokens(tmp_path, docs):
    """Files saved by a Windows editor (BOM, CRLF) read as the same documents as plain UTF-8 ones."""
    plain = tmp_path / "plain" / "c.txt"
    plain.parent.mkdir()
    plain.write_text("\n\n".join(d.replace("\n", " ") + "\nsecond line" for d in docs) + "\n", encoding="utf-8")
    windows = tmp_path / "windows" / "c.txt"
    windows.parent.mkdir()
    windows.write_bytes(b"\xef\xbb\xbf" + plain.read_bytes().replace(b"\n", b"\r\n"))
    (tmp_path / "jsonl").mkdir()
    jsonl = write_jsonl(tmp_path / "jsonl" / "c.jsonl", [d.replace("\n", " ") + "\r\nsecond line" for d in docs])
    jsonl.write_bytes(b"\xef\xbb\xbf" + jsonl.read_bytes().replace(b"\n", b"\r\n"))
    results = [prepare_data(text_config(tmp_path, str(p))) for p in (plain, windows, jsonl)]
    tokens = [ShardIndex.load(r.train).read_all() for r in results]
    assert np.array_equal(tokens[0], tokens[1]) and np.array_equal(tokens[0], tokens[2])
    first = documents_in(results[1].train, results[1].tokenizer())[0]
    assert not first.startswith("\ufeff") and "\r" not in first and first.endswith("\nsecond line")


# --------------------------------------------------------------------------- reproducibility

def test_sentence_sample_is_seeded_uniform_and_sized():
    from attnlab.data.tokenizer import sample_sentences

    lines = [f"line {i}" for i in range(10_000)]
    a, b = sample_sentences(iter(lines), 500, seed=0), sample_sentences(iter(lines), 500, seed=0)
    assert a == b and len(set(a)) == 500
    assert sample_sentences(iter(lines), 500, seed=1) != a
    assert 3_500 < np.mean([int(s.split()[1]) for s in a]) < 6_500  # not just the first lines
    assert sample_sentences(iter(lines[:10]), 500, seed=0) == lines[:10]


@pytest.mark.slow  # two subprocesses
def test_two_processes_train_the_same_tokenizer_from_a_sample(tmp_path, docs):
    # sentencepiece's own sampling differs between processes; a fresh clone must get the
    # same tokenizer (and so the same tokens) as the machine that produced a result.
    corpus = write_jsonl(tmp_path / "corpus.jsonl", docs)
    script = (
        "import sys; from attnlab.data import DataConfig, TokenizerConfig, prepare_data\n"
        "tok = TokenizerConfig(vocab_size=800, model_type='unigram', character_coverage=0.98,"
        " input_sentence_size=150)\n"
        f"p = prepare_data(DataConfig(source='text', paths=[{str(corpus)!r}], tokenizer=tok,"
        " cache_dir=sys.argv[1]))\n"
        "print(p.tokenizer_sha256)\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    digests = [subprocess.run([sys.executable, "-c", script, str(tmp_path / f"cache{i}")], env=env,
                              capture_output=True, text=True, check=True, timeout=300).stdout.strip()
               for i in (0, 1)]
    assert digests[0] == digests[1] and len(digests[0]) == 64

"""The bundled demo corpus, and the whole pipeline plus report on it (tiny BPE vocabulary)."""

import collections
import json
import lzma
import re

import pytest

from attnlab.data import DataConfig, TokenizerConfig, TokenWindowDataset, prepare_data
from attnlab.data.report import EXAMPLE, format_report, language_stats, sample_texts
from attnlab.data.sources import DEMO_CORPUS


@pytest.fixture(scope="module")
def corpus() -> list[dict]:
    with lzma.open(DEMO_CORPUS, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_demo_corpus_is_bilingual_clean_and_deduplicated(corpus):
    assert DEMO_CORPUS.stat().st_size < 5_000_000
    assert all(set(d) == {"text", "lang", "source"} and d["text"].strip() for d in corpus)
    chars = collections.Counter()
    for d in corpus:
        chars[d["lang"]] += len(d["text"])
    assert set(chars) == {"ja", "en"} and all(c > 1_000_000 for c in chars.values())
    assert 0.8 < chars["ja"] / chars["en"] < 1.25  # roughly balanced
    texts = [d["text"] for d in corpus]
    assert len(set(texts)) == len(texts)
    ja = "".join(d["text"] for d in corpus if d["lang"] == "ja")
    assert ja.count("。") > 10_000 and ja.count("、") > 10_000  # Japanese punctuation kept as is
    joined = "\n".join(texts)
    for markup in (r"<p>", r"</a>", r"\\f[BIRP]", "&amp;", "&lt;"):
        assert not re.search(markup, joined, re.M), markup
    assert "  " not in joined.replace("\n", "")  # whitespace runs collapsed


def test_manifest_matches_the_corpus(corpus):
    manifest = json.loads((DEMO_CORPUS.parent / "manifest.json").read_text())
    assert manifest["documents"] == len(corpus)
    for lang in ("ja", "en"):
        assert manifest["by_lang"][lang]["characters"] == sum(len(d["text"]) for d in corpus if d["lang"] == lang)


def test_demo_pipeline_and_report(tmp_path):
    cfg = DataConfig(cache_dir=str(tmp_path / "cache"),
                     tokenizer=TokenizerConfig(vocab_size=2000, model_type="bpe", character_coverage=0.9995,
                                               input_sentence_size=10_000))
    prepared = prepare_data(cfg)
    assert prepared.train_tokens > 20 * prepared.val_tokens > 0
    x, y = TokenWindowDataset(prepared.train, 256)[0]
    assert x[0].item() == 1 and x.shape == (256,)  # the first window starts a document with <s>

    tok = prepared.tokenizer()
    samples = sample_texts(max_chars=20_000)
    stats = {s.lang: s for s in language_stats(tok, samples)}
    # a small vocab still beats bytes: fewer tokens than characters in both languages
    assert 0.3 < stats["ja"].tokens_per_char < 1 and 0.2 < stats["en"].tokens_per_char < 1
    for texts in samples.values():
        assert all(tok.decode(tok.encode(t)) == t for t in texts)
    report = format_report(tok, samples)
    assert EXAMPLE in report and "round trip exact: True" in report and "tok/char" in report


@pytest.mark.slow  # trains the demo's 8,000-piece tokenizer (seconds)
def test_the_demo_trains_the_tokenizer_the_reference_results_were_made_with(tmp_path):
    """The reference results (demo, zoo, recall, ladder) depend on this exact tokenizer: another
    sentencepiece version trains another one from the same corpus (0.2.2 does), and every loss
    then moves. pyproject.toml pins the version; this guards the pin."""
    import hashlib

    from test_training import compose_config

    cfg = compose_config(["experiment=demo", f"data.cache_dir={tmp_path}"])
    prepared = prepare_data(cfg.data)
    model = next(tmp_path.glob("tokenizers/*/tokenizer.model"))
    assert prepared.vocab_size == 8000
    assert hashlib.md5(model.read_bytes()).hexdigest() == "d148d3372c54f3c9a8b06f8e39470e22"

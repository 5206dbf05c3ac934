"""Tokenizer report: tokens per character on Japanese and English, and the study's example.

    python -m attnlab.data.report                        # the demo tokenizer (trained if needed)
    python -m attnlab.data.report --tokenizer path/to/tokenizer.model
    python -m attnlab.data.report --vocab-size 35000 --model-type bpe

Samples are the demo corpus's held-out (validation) documents of each language,
so the tokenizer trained on the demo's training split has not seen them. Byte
tokens count characters spelled in UTF-8 bytes (LLaMA's vocabulary spends up to
3 per rare kanji); line breaks, also byte tokens, are not counted there.
"""

from __future__ import annotations

import argparse
import json
import lzma
import sys
from dataclasses import dataclass

from attnlab.data.config import DataConfig, DataError, TokenizerConfig
from attnlab.data.prepare import is_val_document, prepare_data
from attnlab.data.sources import DEMO_CORPUS
from attnlab.data.tokenizer import Tokenizer

EXAMPLE = "東京都は日本の首都です。"  # docs/study.md: LLaMA 14 tokens, ELYZA's extended vocabulary 9
RARE = "𠮷野家の龘"  # characters outside any small vocabulary: byte fallback


@dataclass(frozen=True)
class LangStats:
    lang: str
    documents: int
    characters: int
    tokens: int
    byte_tokens: int  # excluding <0x0A> / <0x09> (line breaks and tabs)

    @property
    def tokens_per_char(self) -> float:
        return self.tokens / self.characters


def sample_texts(max_chars: int = 200_000, val_fraction: float = 0.05, seed: int = 0) -> dict[str, list[str]]:
    """Held-out demo documents per language, up to ``max_chars`` each."""
    out: dict[str, list[str]] = {"ja": [], "en": []}
    chars = {"ja": 0, "en": 0}
    with lzma.open(DEMO_CORPUS, "rt", encoding="utf-8") as f:
        for line in f:
            doc = json.loads(line)
            lang = doc["lang"]
            if chars[lang] < max_chars and is_val_document(doc["text"], seed, val_fraction):
                out[lang].append(doc["text"])
                chars[lang] += len(doc["text"])
    return out


def language_stats(tok: Tokenizer, texts: dict[str, list[str]]) -> list[LangStats]:
    layout = {tok._sp.piece_to_id(p) for p in ("<0x0A>", "<0x09>")}
    stats = []
    for lang, docs in texts.items():
        ids = [i for d in tok.encode_batch(docs) for i in d]
        stats.append(LangStats(lang, len(docs), sum(map(len, docs)), len(ids),
                               sum(tok.is_byte(i) and i not in layout for i in ids)))
    return stats


def format_report(tok: Tokenizer, texts: dict[str, list[str]]) -> str:
    lines = [f"tokenizer  {tok.path}", f"vocab      {tok.vocab_size} (sha256 {tok.sha256[:12]})", ""]
    lines.append(f"{'lang':<5}{'docs':>6}{'chars':>10}{'tokens':>10}{'tok/char':>10}{'char/tok':>10}{'byte tok':>10}")
    for s in language_stats(tok, texts):
        lines.append(f"{s.lang:<5}{s.documents:>6}{s.characters:>10}{s.tokens:>10}{s.tokens_per_char:>10.3f}"
                     f"{1 / s.tokens_per_char:>10.2f}{s.byte_tokens:>10}")
    for text in (EXAMPLE, RARE):
        ids = tok.encode(text)
        lines += ["", f"{text}  ->  {len(ids)} tokens ({len(text)} characters)",
                  "  " + " ".join(tok.id_to_piece(i) for i in ids),
                  f"  round trip exact: {tok.decode(ids) == text}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="tokens per character of a SentencePiece tokenizer")
    ap.add_argument("--tokenizer", help="a tokenizer.model; default: train/reuse the demo tokenizer")
    ap.add_argument("--vocab-size", type=int, default=TokenizerConfig.vocab_size)
    ap.add_argument("--model-type", default=TokenizerConfig.model_type)
    ap.add_argument("--max-chars", type=int, default=200_000, help="sample size per language")
    args = ap.parse_args(argv)
    try:
        if args.tokenizer:
            tok = Tokenizer(args.tokenizer)
        else:
            cfg = DataConfig(tokenizer=TokenizerConfig(vocab_size=args.vocab_size, model_type=args.model_type))
            tok = prepare_data(cfg).tokenizer()
        print(format_report(tok, sample_texts(args.max_chars)))
    except (DataError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

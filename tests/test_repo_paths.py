"""The committed text names only paths that exist in the repository, and no machine's own paths.

Checked in the tracked documentation and source files (Markdown, Python, YAML, TOML, notebooks,
Makefile, scripts; data files, binary files and ``.ci/`` are skipped):

- Markdown links ``[text](target)`` in Markdown files and notebook Markdown cells: a relative
  target (no scheme, ``#anchor`` stripped) resolves against the file's folder and must be a
  tracked file or a folder holding one.
- Inline code spans (single or double backticks; fenced blocks are skipped): each
  whitespace-separated token that contains a ``/`` or ends in a known file extension is a
  repository path when its first component is a tracked top-level entry (``attnlab/``,
  ``bench/``, ``train.py``, ...); it resolves against the repository root and must exist.
  Tokens with placeholders or globs (``<``, ``*``, ``{``, ``$``) are skipped, and so are
  generated outputs (``results/`` and anything else ``.gitignore`` excludes, such as
  ``data/cache/``). A path that leaves the repository (``../``, also written bare in prose)
  or goes into a ``shared/`` folder always fails: a user of the repository cannot see it.

A second test forbids machine-local absolute paths (home folders, ``/tmp``, ...) in any
tracked text file, data files included (``.ci/`` and this file excepted).
"""

from __future__ import annotations

import json
import posixpath
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
THIS_FILE = Path(__file__).resolve().relative_to(ROOT).as_posix()

# Files whose inline code and links are documentation (data files such as generated samples
# or result tables are only checked for machine-local paths).
DOC_SUFFIXES = {".md", ".py", ".yaml", ".yml", ".toml", ".ipynb", ".cfg", ".ini", ".txt", ".sh",
                ".sbatch", ""}
KNOWN_EXTENSIONS = (".py", ".md", ".yaml", ".yml", ".json", ".jsonl", ".csv", ".png", ".pdf",
                    ".ipynb", ".toml", ".txt", ".tex", ".sbatch", ".xz", ".sh")
PLACEHOLDER = re.compile(r"[<>*{}$?]")
FENCE = re.compile(r"^\s*(```|~~~)")
CODE_SPAN = re.compile(r"(`+)(.+?)(?<!`)\1(?!`)", re.DOTALL)
LINK = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+[\"'][^)\n]*[\"'])?\s*\)")
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
BARE_OUTSIDE = re.compile(r"(?<![\w./-])(\.\./[\w./-]*\w)")  # ../somewhere, without backticks
MACHINE_LOCAL = re.compile(r"(?<![\w.~-])(/work/|/root/|/home/|/tmp/|/Users/|/private/var/)"
                           r"|[A-Za-z]:\\{1,2}Users\b", re.IGNORECASE)


def _git(*args: str, stdin: str | None = None) -> str:
    try:
        done = subprocess.run(["git", "-C", str(ROOT), *args], input=stdin, capture_output=True,
                              text=True, check=False, timeout=120)
    except FileNotFoundError:
        pytest.skip("git is not installed")
    if done.returncode not in (0, 1):  # check-ignore exits 1 when nothing is ignored
        pytest.skip(f"not a git checkout: {done.stderr.strip()}")
    return done.stdout


def _tracked() -> list[str]:
    return [p for p in _git("ls-files", "-z").split("\0") if p and (ROOT / p).is_file()]


def _read_text(path: str) -> str | None:
    data = (ROOT / path).read_bytes()
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _blocks(path: str, text: str) -> list[tuple[str, str, bool]]:
    """(label, text, is_markdown) of each part of a file to scan: the file, or a notebook's cells."""
    if path.endswith(".ipynb"):
        cells = json.loads(text).get("cells", [])
        return [(f"{path}:cell{i}", "".join(c.get("source", [])), c.get("cell_type") == "markdown")
                for i, c in enumerate(cells)]
    return [(path, text, path.endswith(".md"))]


def _without_fences(text: str) -> str:
    """Blank the lines of fenced code blocks, keeping line numbers."""
    out, fenced = [], False
    for line in text.split("\n"):
        if FENCE.match(line):
            fenced = not fenced
            out.append("")
        else:
            out.append("" if fenced else line)
    return "\n".join(out)


def _paragraphs(text: str):
    """(first line number, paragraph) for runs of non-blank lines; code spans never cross them."""
    start, lines = None, []
    for number, line in enumerate(text.split("\n"), 1):
        if line.strip():
            if start is None:
                start = number
            lines.append(line)
        elif lines:
            yield start, "\n".join(lines)
            start, lines = None, []
    if lines:
        yield start, "\n".join(lines)


def _always_outside(path: str) -> bool:
    return path.startswith("shared/") or "/shared/" in path


def _references(path: str, text: str, top_level: set[str]):
    """(where, path as written, repository-relative path) of every reference in one file."""
    folder = posixpath.dirname(path)
    for label, block, markdown in _blocks(path, text):
        if markdown:
            block = _without_fences(block)
        for start, paragraph in _paragraphs(block):
            for span in CODE_SPAN.finditer(paragraph):
                line = start + paragraph.count("\n", 0, span.start())
                for token in span.group(2).split():
                    if PLACEHOLDER.search(token) or token.startswith(("'", '"')):
                        continue  # a glob, a placeholder, or a quoted value (error text, argument)
                    token = token.rsplit("=", 1)[-1].split("::", 1)[0].strip("'\"()[],;:")
                    token = token.removeprefix("./")
                    if not token or "://" in token or token.startswith(("/", "~")):
                        continue
                    if "/" not in token and not token.endswith(KNOWN_EXTENSIONS):
                        continue
                    if _always_outside(token) or token.split("/")[0] in top_level:
                        yield f"{label}:{line}", token, posixpath.normpath(token)
            for bare in BARE_OUTSIDE.finditer(paragraph):  # named without backticks or a link
                line = start + paragraph.count("\n", 0, bare.start())
                yield f"{label}:{line}", bare.group(1), posixpath.normpath(posixpath.join(folder, bare.group(1)))
            if not markdown:
                continue
            plain = CODE_SPAN.sub(lambda m: " " * len(m.group(0)), paragraph)
            for link in LINK.finditer(plain):
                target = link.group(1)
                if SCHEME.match(target) or target.startswith("#"):
                    continue
                target = target.split("#", 1)[0].split("?", 1)[0]
                if not target:
                    continue
                resolved = (posixpath.normpath(target.lstrip("/")) if target.startswith("/")
                            else posixpath.normpath(posixpath.join(folder, target)))
                line = start + paragraph.count("\n", 0, link.start())
                yield f"{label}:{line}", target, resolved


def test_referenced_repository_paths_exist():
    tracked = _tracked()
    files = set(tracked)
    folders = {posixpath.dirname(p) for p in tracked}
    for folder in list(folders):
        while folder:
            folder = posixpath.dirname(folder)
            folders.add(folder)
    top_level = {p.split("/")[0] for p in tracked}

    missing = []  # (where, as written, resolved), in file order without repeats
    for path in tracked:
        if (posixpath.splitext(path)[1] not in DOC_SUFFIXES or path.startswith(".ci/")
                or path == THIS_FILE):  # this file names the forbidden paths it looks for
            continue
        text = _read_text(path)
        if text is None:
            continue
        for where, written, resolved in dict.fromkeys(_references(path, text, top_level)):
            if _always_outside(written) or _always_outside(resolved) or resolved.startswith(".."):
                missing.append((where, written, "outside the repository"))
            elif resolved.split("/")[0] == "results":
                continue  # run outputs, untracked by design
            elif resolved.rstrip("/") not in files and resolved.rstrip("/") not in folders:
                missing.append((where, written, resolved))

    # Paths that .gitignore excludes are generated (data/cache/, ...): not expected in the tree.
    # A path is asked about as a file and as a folder (``data/cache/`` matches folders only).
    candidates = sorted({r for _, _, r in missing if r != "outside the repository"})
    asked = "".join(f"{r}\n{r}/\n" for r in candidates)
    ignored = ({p.rstrip("/") for p in _git("check-ignore", "--no-index", "--stdin", stdin=asked)
                .splitlines()} if candidates else set())
    broken = [m for m in missing if m[2] not in ignored]
    for where, written, resolved in broken:
        print(f"{where}: {written}" + ("" if written == resolved else f"  ({resolved})"))
    assert not broken, (f"{len(broken)} reference(s) to paths that are not in the repository:\n"
                        + "\n".join(f"  {w}: {p} -> {r}" for w, p, r in broken))


def test_no_machine_local_absolute_paths():
    hits = []
    for path in _tracked():
        if path == THIS_FILE or path.startswith(".ci/"):
            continue
        text = _read_text(path)
        if text is None:
            continue
        for number, line in enumerate(text.split("\n"), 1):
            match = MACHINE_LOCAL.search(line)
            if match:
                hits.append(f"{path}:{number}: {match.group(0)!r} in {line.strip()[:160]}")
    for hit in hits:
        print(hit)
    assert not hits, "machine-local absolute paths in committed files:\n" + "\n".join(hits)

"""Where a result came from: the code's commit and the library versions, for summary.json."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path


def git_commit() -> str | None:
    """The checked-out commit of this code (``+dirty`` with uncommitted changes), or None
    outside a git checkout."""
    here = Path(__file__).parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=here, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True,
                               cwd=here, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("+dirty" if dirty else "")


def versions() -> dict[str, str]:
    import lightning
    import sentencepiece
    import torch

    # sentencepiece: another version trains another tokenizer from the same corpus.
    return {"torch": torch.__version__, "lightning": lightning.__version__,
            "sentencepiece": sentencepiece.__version__, "python": platform.python_version()}

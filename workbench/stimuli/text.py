"""Natural text from a user's file: paragraphs for prompts and haystacks (no text ships with the package)."""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import InputError


def read_text(path: str | Path) -> str:
    """The file's text (UTF-8, BOM stripped); clear error if missing or empty."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(f"text file {path} does not exist: pass a path to a UTF-8 text file")
    text = path.read_text(encoding="utf-8-sig", errors="replace")
    if not text.strip():
        raise InputError(f"text file {path} is empty")
    return text


def paragraphs(path: str | Path, min_chars: int = 200) -> list[str]:
    """Blank-line-separated paragraphs of the file with at least ``min_chars`` characters, whitespace folded."""
    paras = [re.sub(r"\s+", " ", p).strip() for p in re.split(r"\n\s*\n", read_text(path))]
    long = [p for p in paras if len(p) >= min_chars]
    if not long:
        raise InputError(f"{path} has no paragraph of {min_chars}+ characters")
    return long

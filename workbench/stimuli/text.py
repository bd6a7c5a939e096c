"""Natural text from a user's file: paragraphs for prompts and haystacks (no text ships with the package)."""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import InputError


def read_text(path: str | Path) -> str:
    """The file's text (UTF-8, BOM stripped); clear error if missing, empty, or not text (NUL bytes, not UTF-8)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(f"text file {path} does not exist: pass a path to a UTF-8 text file")
    data = path.read_bytes()
    nul = data.find(b"\0")
    if nul >= 0:
        raise InputError(f"{path} is not a text file (it contains NUL bytes, the first at byte {nul}): "
                         "pass a plain UTF-8 text file")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise InputError(f"{path} is not UTF-8 text (byte {err.start} cannot be decoded): pass a plain text file, "
                         "or convert it to UTF-8 first (e.g. iconv -t UTF-8)") from None
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

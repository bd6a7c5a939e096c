"""Checks of command-line values, run by argparse (``type=``) before any model is loaded or anything computed.

Each check returns the value (unchanged text where the command reads text) or raises
``argparse.ArgumentTypeError``; the parser then prints one line naming the flag, e.g.
``workbench: error: argument --device: device 'gpu0' ...``, and exits with code 2.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from ..errors import InputError, WorkbenchError


def _checked(check, *args):
    """Run a library check, turning its WorkbenchError into the error argparse prints with the flag's name."""
    try:
        return check(*args)
    except WorkbenchError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def at_run(check, text: str, flag: str):
    """Run a check on a value known only while running (a default derived from the model): InputError naming ``flag``."""
    try:
        return check(text)
    except argparse.ArgumentTypeError as err:
        raise InputError(f"argument {flag}: {err}") from None


def device(text: str) -> str:
    """--device: cpu, cuda, cuda:N, mps or auto, and present on this machine."""
    from ..models.subject import resolve_device

    _checked(resolve_device, text)
    return text


def model(text: str) -> str:
    """--model: a registered name, a local folder with a config.json, or a hub id (org/name)."""
    from ..models import check_model_name

    _checked(check_model_name, text)
    return text


def ray_address(text: str) -> str:
    """--ray-address: 'auto' or HOST:PORT of a Ray cluster's head."""
    from ..executors.ray_executor import parse_address

    _checked(parse_address, text)
    return text


def head(text: str) -> tuple[int, int]:
    """--head L18H6 / 18.6 -> (18, 6)."""
    from ..inputs import parse_head

    return _checked(parse_head, text)


def heads(text: str) -> list[tuple[int, int]]:
    """--mask-heads 'L17H3,L18H6' -> [(17, 3), (18, 6)]."""
    from ..inputs import as_heads

    return _checked(as_heads, text)


def head_group(text: str) -> str:
    """--heads L17H3+L18H6: every '+'-joined head readable (the sweep reads the text itself)."""
    from ..inputs import parse_head

    for part in text.replace(" ", "").split("+"):
        _checked(parse_head, part)
    return text


def atp_fixes(text: str) -> str:
    """--atp-fixes: qk, graddrop, qk,graddrop or none (the AtP* fixes of an attribution screen)."""
    from ..sweeps.screen import check_fixes

    _checked(check_fixes, text)
    return text


def count(minimum: int = 1):
    """An argparse type: a whole number >= ``minimum``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value
    parse.__name__ = "count"
    return parse


def fraction(text: str) -> float:
    """An argparse type: a number strictly between 0 and 1 (e.g. a confidence level)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must lie strictly between 0 and 1, got {value}")
    return value


def counts(minimum: int = 1):
    """An argparse type: comma-separated whole numbers, each >= ``minimum`` (returned as the text)."""
    one = count(minimum)

    def parse(text: str) -> str:
        values = [x for x in text.replace(" ", "").split(",") if x]
        if not values:
            raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, got {text!r}")
        for x in values:
            one(x)
        return text
    parse.__name__ = "counts"
    return parse


def input_file(text: str) -> str:
    """A file to read: it exists and is a readable file."""
    path = Path(text).expanduser()
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder: give a file")
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{text}: no such file")
    if not os.access(path, os.R_OK):
        raise argparse.ArgumentTypeError(f"{text}: permission denied (cannot read it)")
    return text


def file_or(*words: str):
    """An argparse type: one of ``words`` (e.g. 'noise') or a readable file."""
    def parse(text: str) -> str:
        if text in words:
            return text
        try:
            return input_file(text)
        except argparse.ArgumentTypeError as err:
            raise argparse.ArgumentTypeError(f"{err}: give {' or '.join(words)} or a text file") from None
    parse.__name__ = "file_or"
    return parse


def input_folder(text: str) -> str:
    """A folder to read: it exists and is a folder."""
    path = Path(text).expanduser()
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{text}: no such folder")
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file: give a folder")
    return text


def _writable_from(path: Path, text: str) -> None:
    """Raise unless the nearest existing folder at or above ``path`` is a folder this process can create files in."""
    existing = path
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise argparse.ArgumentTypeError(f"cannot create {text}: {existing} is a file, not a folder")
    try:  # os.access says yes to root everywhere; creating a file is the real test (/proc, read-only mounts)
        fd, probe = tempfile.mkstemp(prefix=".workbench-probe-", dir=existing)
    except OSError as err:
        raise argparse.ArgumentTypeError(f"cannot write {text}: creating a file in {existing} fails ({err.strerror}); "
                                         "choose another place") from None
    os.close(fd)
    os.unlink(probe)


def output_folder(text: str) -> str:
    """--out where a folder is written: not an existing file, and creatable/writable."""
    path = Path(text).expanduser()
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file: give a folder (it is created if missing)")
    _writable_from(path, text)
    return text


def output_file(text: str) -> str:
    """--out where one file is written: not an existing folder, and its folder creatable/writable."""
    path = Path(text).expanduser()
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder: give a file name, e.g. {Path(text) / 'pattern.html'}")
    if path.exists() and not os.access(path, os.W_OK):
        raise argparse.ArgumentTypeError(f"{text}: permission denied (cannot overwrite it)")
    _writable_from(path.parent, text)
    return text

"""Readers and checks of user input that the whole package shares: heads, counts, factors.

One head syntax everywhere: ``(18, 6)``, ``"L18H6"``, ``"18.6"`` or ``"18,6"`` (layer 18, query head 6).
Every check raises :class:`~workbench.errors.InputError` naming the argument and what to give instead; nothing
is truncated or rounded silently.
"""

from __future__ import annotations

import math
import numbers
import re

from .errors import InputError

Head = tuple[int, int]

HEAD_FORMAT = "write a head as LAYER.HEAD or LxHy, e.g. 18.6 or L18H6"


def parse_head(text: str) -> Head:
    """'18.6', 'L18H6', 'l18h6' or '18,6' -> (18, 6); InputError naming the format otherwise."""
    match = re.fullmatch(r"\s*(?:L(\d+)\s*H(\d+)|(\d+)\s*[.,]\s*(\d+))\s*", str(text), flags=re.IGNORECASE)
    if match is None:
        raise InputError(f"cannot read head {text!r}: {HEAD_FORMAT}")
    layer, head = (match.group(1), match.group(2)) if match.group(1) is not None else (match.group(3), match.group(4))
    return int(layer), int(head)


def whole_number(value, name: str) -> int:
    """``value`` as an int if it is a whole number (int, numpy/torch integer, or an integral float); else InputError."""
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:  # numpy / torch scalars
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InputError(f"{name} must be a whole number, got {value!r}")
    if isinstance(value, numbers.Integral):
        return int(value)
    if not math.isfinite(value) or not float(value).is_integer():
        raise InputError(f"{name} must be a whole number, got {value!r} (nothing is rounded for you)")
    return int(value)


def as_head(value) -> Head:
    """One head from a (layer, head) pair of whole numbers or a string such as 'L18H6'; InputError otherwise."""
    if isinstance(value, str):
        return parse_head(value)
    try:
        items = list(value)
    except TypeError:
        raise InputError(f"cannot read head {value!r}: give a (layer, head) pair or a string; {HEAD_FORMAT}") from None
    if len(items) != 2:
        raise InputError(f"cannot read head {value!r}: a head is a (layer, head) pair of two numbers; {HEAD_FORMAT}")
    return whole_number(items[0], f"the layer of head {tuple(items)!r}"), whole_number(items[1], f"the head of head {tuple(items)!r}")


def as_heads(values) -> list[Head]:
    """A list of heads from pairs and/or strings, or one string listing heads ('L18H6, L17H3'); order kept."""
    if isinstance(values, str):
        parts = [p for p in re.split(r"[,;\s]+", values.strip()) if p]
        try:
            return [parse_head(p) for p in parts]
        except InputError:
            return [parse_head(values)]  # '18,6' names one head; otherwise the error names the format
    try:
        items = list(values)
    except TypeError:
        raise InputError(f"heads must be a list of (layer, head) pairs or strings like 'L18H6', got {values!r}") from None
    if len(items) == 2 and all(isinstance(v, numbers.Real) or (hasattr(v, "ndim") and v.ndim == 0) for v in items):
        raise InputError(f"heads={tuple(items)!r} is one pair of numbers: give a list of heads, e.g. "
                         f"[({items[0]}, {items[1]})]")
    return [as_head(v) for v in items]


def positive_int(value, name: str, minimum: int = 1) -> int:
    """``value`` as an int >= ``minimum``; InputError naming ``name`` otherwise."""
    number = whole_number(value, name)
    if number < minimum:
        raise InputError(f"{name} must be at least {minimum}, got {number}")
    return number


def finite_number(value, name: str, minimum: float | None = None) -> float:
    """``value`` as a finite float (>= ``minimum`` if given); InputError for NaN, infinities and non-numbers."""
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise InputError(f"{name} must be a finite number, got {value!r}")
    if minimum is not None and value < minimum:
        raise InputError(f"{name} must be at least {minimum}, got {value!r}")
    return float(value)

"""Intervention specs: declarative, per query head, applied by the one attention hook (``apply``).

Each spec names heads as (layer, head) pairs in query-head numbering. ``group=True`` widens each
head to every query head of its key/value group (grouped-query models); the default acts on the
query head alone. ``rows`` restricts a spec to those batch rows (default: every row), so one forward
pass can carry a different intervention in each copy of a repeated batch (the sweep runner does this).

Heads may be given as (layer, head) pairs or strings ('L18H6', '18.6'); factors must be finite and key
positions whole numbers, else InputError. Specs compose: two specs on one head (in one ``apply`` or in nested
``apply`` blocks) both act, in order, so ``ScaleHead(0.5)`` inside ``ScaleHead(0.5)`` scales by 0.25.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..errors import InputError
from ..inputs import as_heads, finite_number, whole_number

Head = tuple[int, int]


def _heads(heads) -> tuple[Head, ...]:
    return tuple(sorted(set(as_heads(heads))))


@dataclass(frozen=True)
class HeadSpec:
    heads: tuple[Head, ...]
    group: bool = field(default=False, kw_only=True)
    rows: tuple[int, ...] | None = field(default=None, kw_only=True)

    def __post_init__(self):
        object.__setattr__(self, "heads", _heads(self.heads))
        if self.rows is not None:
            object.__setattr__(self, "rows", tuple(whole_number(r, "a batch row") for r in self.rows))
        if hasattr(self, "factor"):
            object.__setattr__(self, "factor", finite_number(self.factor, f"{type(self).__name__} factor",
                                                             minimum=0.0 if isinstance(self, ScaleKeys) else None))
        if hasattr(self, "keys"):
            keys = (self.keys,) if isinstance(self.keys, (int, float)) else tuple(self.keys)
            if not keys:
                raise InputError(f"{type(self).__name__} needs key positions: keys=(0,) for the first token")
            object.__setattr__(self, "keys", tuple(whole_number(k, f"{type(self).__name__} key") for k in keys))


@dataclass(frozen=True)
class ZeroHead(HeadSpec):
    """Zero ablation: the head's output z (before o_proj) is set to 0."""


@dataclass(frozen=True)
class ScaleHead(HeadSpec):
    """Multiply the head's output z by ``factor`` (JUICE-style amplification or suppression)."""

    factor: float = field(default=1.0, kw_only=True)


@dataclass(frozen=True)
class ReplaceHead(HeadSpec):
    """Replace the head's output z with given values: mean ablation, resample ablation, activation patching.

    ``values[(layer, head)]``: (D,) or (N, D) (broadcast over the batch: mean ablation) or (B, N, D)
    (per prompt: resample ablation / patching from another run; with ``rows``, B = len(rows) and
    ``values[i]`` goes to batch row ``rows[i]``). ``positions``: query positions to replace (default all).
    """

    values: dict = field(default_factory=dict, kw_only=True, compare=False, hash=False)
    positions: tuple[int, ...] | None = field(default=None, kw_only=True)


@dataclass(frozen=True)
class AddToHead(HeadSpec):
    """Add ``factor`` x given values to the head's output z (JUICE's second run adds scaled first-run outputs).

    ``values`` and ``positions`` are read as in :class:`ReplaceHead`.
    """

    values: dict = field(default_factory=dict, kw_only=True, compare=False, hash=False)
    factor: float = field(default=1.0, kw_only=True)
    positions: tuple[int, ...] | None = field(default=None, kw_only=True)


@dataclass(frozen=True)
class ZeroQuery(HeadSpec):
    """Zero the head's query: every visible key gets the same score, so attention is uniform over the
    prefix and the head outputs the mean of its values (Wu et al. 2024's retrieval-head masking)."""


@dataclass(frozen=True)
class ZeroValue(HeadSpec):
    """Zero the value vectors the head reads (Ji-An et al. 2024's ablation).

    Since z_h = A_h V, zeroing the values for one query head is exactly zeroing its output; with
    ``group=True`` the shared key/value head is zeroed, i.e. every query head of the group outputs 0.
    """


@dataclass(frozen=True)
class KnockOutKeys(HeadSpec):
    """Attention knock-out: the head may not attend to ``keys`` (key positions); softmax renormalises."""

    keys: tuple[int, ...] = field(default=(), kw_only=True)


@dataclass(frozen=True)
class ScaleKeys(HeadSpec):
    """Scale the attention to ``keys`` by ``factor`` and renormalise, giving the freed mass to the other
    keys in proportion (= adding log(factor) to those logits; ACT, Yu et al. 2024; ZeroTuning)."""

    keys: tuple[int, ...] = field(default=(), kw_only=True)
    factor: float = field(default=1.0, kw_only=True)

    @property
    def log_factor(self) -> float:
        return -math.inf if self.factor == 0 else math.log(self.factor)


def key_positions(spec: HeadSpec, n_keys: int) -> list[int]:
    """The spec's key positions checked against a forward pass with ``n_keys`` keys (InputError if any lies outside)."""
    outside = [k for k in spec.keys if not -n_keys <= k < n_keys]
    if outside:
        raise InputError(f"{type(spec).__name__} keys {outside} lie outside the context of {n_keys} tokens: "
                         f"use positions 0..{n_keys - 1} (or -{n_keys}..-1 from the end)")
    return list(spec.keys)


def mean_values(capture_z: dict[int, torch.Tensor], heads, per_position: bool = False) -> dict:
    """Mean-ablation values from a reference capture's z: {(l, h): (D,) or (N, D)} averaged over the batch (and positions)."""
    out = {}
    for layer, head in _heads(heads):
        z = capture_z[layer][:, :, head]  # (B, N, D)
        out[(layer, head)] = z.mean(0) if per_position else z.mean((0, 1))
    return out

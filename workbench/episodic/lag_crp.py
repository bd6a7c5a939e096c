"""Lag-CRPs of attention: per-head lag curves from captured scores, their uncertainty, and summary scalars.

Layout: ``values[seq, head..., query, lag]`` holds, for each query of the second presentation, the head's value
(pre-softmax score as in Ji-An et al. 2024, or post-softmax attention as in Mistry et al. 2025) at the key
``first occurrence of the query's token + lag``; NaN where that key does not exist or is not visible.
Pure functions: no model calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from workbench.errors import InputError


@dataclass(frozen=True)
class LagCurve:
    """Per-head lag curve ``mean[head..., lag]`` with its SEM, sample count and bootstrap percentile interval."""

    lags: np.ndarray
    mean: np.ndarray
    sem: np.ndarray
    n: np.ndarray
    ci_low: np.ndarray | None
    ci_high: np.ndarray | None


def lag_values(matrix: np.ndarray, query_pos: np.ndarray, first_pos: np.ndarray, lags: Sequence[int]) -> np.ndarray:
    """``values[seq, head..., query, lag] = matrix[seq, head..., query_pos, first_pos + lag]``, NaN off the sequence or above the causal diagonal (Ji-An et al. 2024)."""
    matrix = np.asarray(matrix, dtype=np.float64)
    query_pos, first_pos = np.asarray(query_pos), np.asarray(first_pos)
    if matrix.ndim < 3 or matrix.shape[-1] != matrix.shape[-2]:
        raise InputError(f"matrix must be [seq, head..., query, key] with square last axes, got {matrix.shape}")
    if query_pos.shape != first_pos.shape or query_pos.ndim != 2 or query_pos.shape[0] != matrix.shape[0]:
        raise InputError(f"query_pos and first_pos must both be [seq={matrix.shape[0]}, query], got "
                         f"{query_pos.shape} and {first_pos.shape}")
    n_pos = matrix.shape[-1]
    if (query_pos < 0).any() or (query_pos >= n_pos).any():
        raise InputError(f"query positions must lie in [0, {n_pos})")
    lags = np.asarray(lags)
    keys = first_pos[..., None] + lags  # [seq, query, lag]
    ok = (keys >= 0) & (keys <= query_pos[..., None]) & (first_pos[..., None] >= 0)
    heads = matrix.shape[1:-2]
    rows = np.take_along_axis(matrix, query_pos.reshape((len(query_pos),) + (1,) * len(heads) + (-1, 1)), axis=-2)
    picked = np.take_along_axis(rows, np.where(ok, keys, 0).reshape((len(keys),) + (1,) * len(heads) + keys.shape[1:]),
                                axis=-1)
    return np.where(ok.reshape((len(ok),) + (1,) * len(heads) + ok.shape[1:]), picked, np.nan)


def aggregate_lag_curves(values: np.ndarray, lags: Sequence[int], *, n_boot: int = 1000, ci: float = 0.95,
                         seed: int = 0) -> LagCurve:
    """Mean over sequences and queries (NaN skipped) with SEM over those samples (Ji-An et al. 2024), and a percentile bootstrap CI resampling whole sequences (Efron 1979)."""
    values = np.asarray(values, dtype=np.float64)
    lags = np.asarray(lags)
    if values.ndim < 3 or values.shape[-1] != len(lags):
        raise InputError(f"values must be [seq, head..., query, lag] with {len(lags)} lags, got shape {values.shape}")
    if not 0 < ci < 1:
        raise InputError(f"ci must be in (0, 1), got {ci}")
    ok = ~np.isnan(values)
    x = np.where(ok, values, 0.0)
    sums, sq, counts = x.sum(-2), (x ** 2).sum(-2), ok.sum(-2).astype(np.float64)  # per sequence
    n = counts.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = sums.sum(0) / n
        var = (sq.sum(0) - n * mean ** 2) / (n - 1)
        sem = np.sqrt(np.clip(var, 0.0, None) / n)
    low = high = None
    if n_boot:
        rng = np.random.default_rng(seed)
        n_seq = values.shape[0]
        weights = rng.multinomial(n_seq, np.full(n_seq, 1.0 / n_seq), size=n_boot).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            boot = np.tensordot(weights, sums, 1) / np.tensordot(weights, counts, 1)
        low, high = np.nanpercentile(boot, [50 * (1 - ci), 50 * (1 + ci)], axis=0)
    return LagCurve(lags.copy(), mean, sem, n.astype(np.int64), low, high)


def conditional_response_probability(attn: np.ndarray, first_pos: np.ndarray, *, max_lag: int = 8,
                                     available: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Kahana (1996) lag-CRP with attention mass as the response: CRP(k) = Σ attention to study position p+k / Σ queries for which p+k is an available study position."""
    attn = np.asarray(attn, dtype=np.float64)
    first_pos = np.asarray(first_pos)
    if attn.ndim < 3 or first_pos.ndim != 2 or first_pos.shape != (attn.shape[0], attn.shape[-2]):
        raise InputError(f"attn must be [seq, head..., query, study_pos] and first_pos [seq, query]; got "
                         f"{attn.shape} and {first_pos.shape}")
    n_seq, n_query, n_study = first_pos.shape + (attn.shape[-1],)
    avail = np.ones((n_seq, n_query, n_study), bool) if available is None else np.asarray(available, bool)
    if avail.shape != (n_seq, n_query, n_study):
        raise InputError(f"available must be [seq, query, study_pos] = {(n_seq, n_query, n_study)}, got {avail.shape}")
    heads = attn.shape[1:-2]
    lags = np.arange(-max_lag, max_lag + 1)
    keys = first_pos[..., None] + lags  # [seq, query, lag]
    inside = (first_pos[..., None] >= 0) & (keys >= 0) & (keys < n_study)
    safe = np.where(inside, keys, 0)
    ok = inside & np.take_along_axis(avail, safe, axis=-1)
    chosen = np.take_along_axis(attn, safe.reshape((n_seq,) + (1,) * len(heads) + safe.shape[1:]), axis=-1)
    chosen = np.where(ok.reshape((n_seq,) + (1,) * len(heads) + ok.shape[1:]), chosen, 0.0)
    opportunities = ok.sum((0, 1)).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return lags, np.moveaxis(chosen, 0, -3).sum((-3, -2)) / opportunities


def serial_position_curve(attn: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (and SEM) attention to each study-list position over sequences and queries (Murdock 1962 serial-position curve; Mistry et al. 2025)."""
    attn = np.asarray(attn, dtype=np.float64)
    if attn.ndim < 3:
        raise InputError(f"attn must be [seq, head..., query, study_pos], got shape {attn.shape}")
    x = np.moveaxis(attn, 0, -3)  # [head..., seq, query, pos]
    x = x.reshape(x.shape[:-3] + (-1, x.shape[-1]))
    n = (~np.isnan(x)).sum(-2)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.nanmean(x, -2), np.nanstd(x, -2, ddof=1) / np.sqrt(n)


def _at(curve: np.ndarray, lags: np.ndarray, wanted: Sequence[int]) -> np.ndarray:
    lags = np.asarray(lags)
    missing = sorted(set(np.asarray(wanted).tolist()) - set(lags.tolist()))
    if missing:
        raise InputError(f"the curve has no values at lags {missing}; its lags are {lags.tolist()}")
    return np.asarray(curve, dtype=np.float64)[..., [int(np.flatnonzero(lags == k)[0]) for k in wanted]]


def contiguity(curve: np.ndarray, lags: Sequence[int], near: int = 2) -> np.ndarray:
    """Contiguity = mean of the curve at 1 <= |lag| <= near minus its mean at |lag| > near (lag-CRP contiguity effect, Kahana 1996)."""
    lags = np.asarray(lags)
    close, far = lags[(np.abs(lags) >= 1) & (np.abs(lags) <= near)], lags[np.abs(lags) > near]
    if len(close) == 0 or len(far) == 0:
        raise InputError(f"contiguity needs lags with 1 <= |lag| <= {near} and |lag| > {near}; got {lags.tolist()}")
    return _at(curve, lags, close).mean(-1) - _at(curve, lags, far).mean(-1)


def forward_asymmetry(curve: np.ndarray, lags: Sequence[int], k: int | Sequence[int] = 1) -> np.ndarray:
    """Forward asymmetry = mean over k of curve(+k) - curve(-k) (Kahana 1996 asymmetry of the lag-CRP; Mistry et al. 2025)."""
    ks = np.atleast_1d(k)
    if (ks <= 0).any():
        raise InputError(f"k must be positive lags, got {k}")
    return (_at(curve, lags, ks) - _at(curve, lags, -ks)).mean(-1)


def primacy_recency(position_curve: np.ndarray, k: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Primacy = mean of the first k serial positions minus the middle ones; recency = mean of the last k minus the middle (Murdock 1962)."""
    position_curve = np.asarray(position_curve, dtype=np.float64)
    if position_curve.shape[-1] < 2 * k + 1:
        raise InputError(f"primacy/recency with k={k} needs at least {2 * k + 1} study positions, "
                         f"got {position_curve.shape[-1]}")
    middle = position_curve[..., k:-k].mean(-1)
    return position_curve[..., :k].mean(-1) - middle, position_curve[..., -k:].mean(-1) - middle

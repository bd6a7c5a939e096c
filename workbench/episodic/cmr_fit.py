"""Fit a head's lag curve with CMR: grid search over simulated CRPs, optional continuous refinement (Ji-An et al. 2024, METHODS.md §3).

Per head on lags -5..+5: ``a' = a - min a``; per grid CRP ``c`` (renormalised over those lags)
``c' = (c - min c) * s`` with ``s = max a' / max(c - min c)`` (the inverse temperature); CMR distance
``mean((c' - a')²) / var(a')``; the grid point with the smallest distance wins (corxyz/icl-cmr
``src/fit_attn_score.py``: ``get_crp``, ``scale_crp_to_attn``, ``get_head_mse``). CMR-like: distance < 0.5.

A flat head (``var(a') == 0``) has no lag structure to fit: its distance is ``inf`` (never CMR-like) and its
parameters are NaN. A head with NaN at a fitted lag gets NaN everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import numpy as np

from workbench.episodic.cmr import CMRGrid, load_grid
from workbench.errors import InputError

FIT_LAGS = tuple(range(-5, 6))
CMR_LIKE = 0.5
CMR_LIKE_STRICT = 0.1


@dataclass(frozen=True)
class CMRFit:
    """Best CMR fit per head: fields have the heads' batch shape (floats for one head); curves end in the fit-lag axis."""

    distance: np.ndarray | float
    beta_enc: np.ndarray | float
    beta_rec: np.ndarray | float
    gamma_ft: np.ndarray | float
    scale: np.ndarray | float
    curve: np.ndarray  # fitted CRP in the head's units: c' + min a
    crp: np.ndarray  # the CMR CRP over the fit lags, summing to 1
    lags: np.ndarray
    refined: np.ndarray | bool  # True where the continuous refinement beat the grid optimum

    def cmr_like(self, threshold: float = CMR_LIKE) -> np.ndarray | bool:
        """CMR-like heads: distance < threshold (0.5 in Ji-An et al. 2024; 0.1 also reported)."""
        return self.distance < threshold


def cmr_distance(head: np.ndarray, crp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CMR distance mean((c' - a')²)/var(a') with a' = a - min a, c' = (c - min c)·max a'/max(c - min c) (Ji-An et al. 2024); returns (distance, s)."""
    a = head - head.min(-1, keepdims=True)
    c = crp - crp.min(-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = a.max(-1) / c.max(-1)
        var = a.var(-1)
        d = ((c * s[..., None] - a) ** 2).mean(-1) / var
    return np.where(var > 0, d, np.inf), s


@lru_cache(maxsize=4)
def _default_grid() -> CMRGrid:
    return load_grid()


def _grid_curves(grid: CMRGrid, fit_lags: np.ndarray) -> np.ndarray:
    """Grid CRPs at the fit lags, renormalised to sum 1: shape (n_points, n_fit_lags)."""
    missing = sorted(set(fit_lags.tolist()) - set(grid.lags.tolist()))
    if missing:
        raise InputError(f"the CMR grid has no CRP at lags {missing}; it covers {grid.lags.min()}..{grid.lags.max()}")
    c = grid.crp[..., np.searchsorted(grid.lags, fit_lags)].reshape(-1, len(fit_lags))
    return c / c.sum(-1, keepdims=True)


def _grid_search(a: np.ndarray, crps: np.ndarray, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Distance of every head (rows of a') to every grid CRP, via the expanded square; returns (best index, sorted top indices)."""
    cs = crps - crps.min(-1, keepdims=True)
    cmax = cs.max(-1)
    q = (cs ** 2).mean(-1)
    amax, m2, var = a.max(-1), (a ** 2).mean(-1), a.var(-1)
    k = min(8, len(crps))
    order = np.empty((len(a), k), dtype=np.int64)
    for lo in range(0, len(a), chunk):
        sl = slice(lo, lo + chunk)
        s = amax[sl, None] / np.where(cmax > 0, cmax, np.nan)[None, :]
        d = (s ** 2 * q - 2.0 * s * (a[sl] @ cs.T) / a.shape[-1] + m2[sl, None]) / var[sl, None]
        d = np.where(np.isfinite(d), d, np.inf)
        top = np.argpartition(d, k - 1, axis=1)[:, :k]
        order[sl] = np.take_along_axis(top, np.argsort(np.take_along_axis(d, top, 1), axis=1), 1)
    return order[:, 0], order


def fit_cmr(values: np.ndarray, lags: Sequence[int], *, axis: int = -1, grid: CMRGrid | None = None,
            fit_lags: Sequence[int] = FIT_LAGS, refine: bool = False, n_starts: int = 4) -> CMRFit:
    """Fit lag curves ``values[..., lag]`` (lag values ``lags`` along ``axis``) with the CMR grid (Ji-An et al. 2024 §3); ``refine`` adds a bounded continuous search that is kept only if it lowers the distance."""
    grid = _default_grid() if grid is None else grid
    values = np.moveaxis(np.asarray(values, dtype=np.float64), axis, -1)
    lags = np.asarray(lags)
    fit_lags = np.asarray(fit_lags)
    if lags.ndim != 1 or len(lags) != values.shape[-1]:
        raise InputError(f"lags must list the {values.shape[-1]} lag values of axis {axis}, got {len(lags)} lags")
    missing = sorted(set(fit_lags.tolist()) - set(lags.tolist()))
    if missing:
        raise InputError(f"the head curves lack lags {missing}; pass fit_lags within {lags.min()}..{lags.max()}")
    batch = values.shape[:-1]
    a_raw = values[..., [int(np.flatnonzero(lags == k)[0]) for k in fit_lags]].reshape(-1, len(fit_lags))
    crps = _grid_curves(grid, fit_lags)
    a = a_raw - a_raw.min(-1, keepdims=True)
    usable = np.isfinite(a_raw).all(-1) & (a.var(-1) > 0)
    best = np.zeros(len(a), dtype=np.int64)
    starts = np.zeros((len(a), min(8, len(crps))), dtype=np.int64)
    if usable.any():
        best[usable], starts[usable] = _grid_search(a[usable], crps)
    points = np.stack(np.unravel_index(best, grid.crp.shape[:3]), -1)
    params = np.stack([grid.beta_enc[points[:, 0]], grid.beta_rec[points[:, 1]], grid.gamma_ft[points[:, 2]]], -1)
    crp = crps[best]
    refined = np.zeros(len(a), dtype=bool)
    if refine:
        for h in np.flatnonzero(usable):
            better = _refine(a_raw[h], crps, grid, fit_lags, starts[h, :n_starts])
            if better is not None and cmr_distance(a_raw[h], better[1])[0] < cmr_distance(a_raw[h], crp[h])[0]:
                params[h], crp[h], refined[h] = better[0], better[1], True
    distance, scale = cmr_distance(a_raw, crp)
    curve = (crp - crp.min(-1, keepdims=True)) * scale[:, None] + a_raw.min(-1, keepdims=True)
    nan = ~np.isfinite(a_raw).all(-1)
    flat = ~usable & ~nan
    distance[nan] = np.nan
    params[~usable], scale[~usable], crp[~usable] = np.nan, np.nan, np.nan
    curve[flat] = a_raw[flat]
    curve[nan] = np.nan

    def shaped(x, tail=()):
        x = x.reshape(batch + tail)
        return x.item() if x.ndim == 0 else x

    return CMRFit(shaped(distance), shaped(params[:, 0]), shaped(params[:, 1]), shaped(params[:, 2]), shaped(scale),
                  curve.reshape(batch + (len(fit_lags),)), crp.reshape(batch + (len(fit_lags),)), fit_lags.copy(),
                  shaped(refined))


def _refine(head: np.ndarray, crps: np.ndarray, grid: CMRGrid, fit_lags: np.ndarray, starts: np.ndarray):
    """Nelder-Mead (bounded) on (β_enc, β_rec, γ_FT) with the CRP trilinearly interpolated between grid points; best of the starts."""
    from scipy.optimize import minimize

    axes = (grid.beta_enc, grid.beta_rec, grid.gamma_ft)
    table = crps.reshape(grid.crp.shape[:3] + (len(fit_lags),))
    lo = np.array([ax[0] for ax in axes])
    hi = np.array([ax[-1] for ax in axes])

    def crp_at(x):
        x = np.clip(x, lo, hi)
        idx = [min(max(int(np.searchsorted(ax, v, side="right")) - 1, 0), len(ax) - 2) for ax, v in zip(axes, x)]
        w = [(v - ax[i]) / (ax[i + 1] - ax[i]) for ax, v, i in zip(axes, x, idx)]
        cube = table[idx[0]:idx[0] + 2, idx[1]:idx[1] + 2, idx[2]:idx[2] + 2]
        for wi in w:  # contract one parameter axis at a time
            cube = cube[0] * (1.0 - wi) + cube[1] * wi
        return cube / cube.sum()

    def objective(x):
        return float(cmr_distance(head, crp_at(x))[0])

    bounds = list(zip(lo, hi))
    best = None
    for idx in starts:
        x0 = [ax[i] for ax, i in zip(axes, np.unravel_index(idx, grid.crp.shape[:3]))]
        res = minimize(objective, x0, method="Nelder-Mead", bounds=bounds,
                       options={"xatol": 1e-3, "fatol": 1e-7, "initial_simplex": _simplex(x0, bounds)})
        if best is None or res.fun < best.fun:
            best = res
    return (np.clip(best.x, lo, hi), crp_at(best.x)) if best else None


def _simplex(x0: Sequence[float], bounds) -> np.ndarray:
    """A starting simplex of one grid step (0.05, 0.05, 0.1) around x0, stepping inward at the bounds."""
    steps = (0.05, 0.05, 0.1)
    pts = [np.array(x0, dtype=float)]
    for i, (step, (lo, hi)) in enumerate(zip(steps, bounds)):
        p = np.array(x0, dtype=float)
        p[i] = p[i] + step if p[i] + step <= hi else p[i] - step
        pts.append(p)
    return np.array(pts)

"""CMR free-recall simulator and the grid of simulated lag-CRPs (Ji-An et al. 2024, METHODS.md §3).

Model (one-hot items, presented once, plus an absorbing end state at index ``n_items``):
encoding ``M = (I - (1-β_enc) T)^-1 T`` with the shift ``T[i, i+1] = 1``, used for both M^TF and M^FT;
recall from context ``t`` (start: one-hot at ``s0``) with probability ``f / Σf``, ``f = Mᵀt``; after item ``i``:
``t_IN = norm((1-γ_FT) e_i + γ_FT M e_i)``, ``t <- norm((1-β_rec) t + β_rec t_IN)``. Items may be recalled
again (lag 0 is a real outcome); a trial ends when the absorbing state is drawn or after ``max_recalls``.

Conventions adopted to reproduce the authors' grid (``../shared/data/icl-cmr/cmr_crp_grid.npz``), read in
corxyz/icl-cmr ``src/est_cmr_crp.py`` (commit 10ee5fc):
- every recall is a transition, the first one from ``s0`` (``estimateCRP``: ``relPos = samp - s0``);
- a trial's lag counts are divided by its number of recalls (lags beyond ±8 included), trials with no recall
  are dropped (``nanmean``), the trial mean is normalised to sum 1 per ``s0``, then averaged over ``s0``;
- at ``γ_FT = 0`` with ``β_rec = 0`` or ``β_rec = 1`` the authors use closed forms (``getCRP``), not simulation:
  see :func:`closed_form_crp`;
- at most **50** recalls per trial: the public script says ``max_samps = 100``, but the published grid is
  only reproduced with 50 (e.g. β_enc = 1, γ_FT = 1 gives one +1 transition then lag 0 for ever: the grid
  holds 0.02 = 1/50 at lag +1, not 1/100; at β_enc = 1, β_rec = 0.5, γ_FT = 0, 100 recalls miss the grid by
  0.008 at lag +1, 50 by less than 0.001).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from workbench.errors import InputError
from workbench.io import atomic_write

N_ITEMS = 100
MAX_LAG = 8
MAX_RECALLS = 50
N_SIMS = 1000
START_POSITIONS = tuple(range(20))
GRID_BETA_ENC = np.round(np.arange(1, 21) * 0.05, 2)
GRID_BETA_REC = np.round(np.arange(21) * 0.05, 2)
GRID_GAMMA_FT = np.round(np.arange(11) * 0.1, 1)
DEFAULT_GRID_PATH = Path(__file__).resolve().parents[2] / "data" / "cmr" / "cmr_crp_grid.npz"
_BLOCK = 2048  # chains simulated together: small enough that the state stays in cache


def _check_params(beta_enc: float, beta_rec: float, gamma_ft: float) -> None:
    if not 0.0 < beta_enc <= 1.0:
        raise InputError(f"beta_enc must be in (0, 1], got {beta_enc!r} (beta_enc = 0 never encodes a drift)")
    for name, value in (("beta_rec", beta_rec), ("gamma_ft", gamma_ft)):
        if not 0.0 <= value <= 1.0:
            raise InputError(f"{name} must be in [0, 1], got {value!r}")


def encoding_matrix(beta_enc: float, n_items: int = N_ITEMS) -> np.ndarray:
    """CMR encoding ``M = (I - (1-β_enc) T)^-1 T``, i.e. ``M[i, j] = (1-β_enc)^(j-i-1)`` for j > i, with absorbing state ``n_items`` (Ji-An et al. 2024)."""
    _check_params(beta_enc, 0.0, 0.0)
    idx = np.arange(n_items + 1)
    gap = idx[None, :] - idx[:, None] - 1
    return np.where(gap >= 0, (1.0 - beta_enc) ** np.maximum(gap, 0), 0.0)


def _recall_tables(beta_enc: float, gamma_ft: float, n_items: int, dtype) -> tuple[np.ndarray, ...]:
    """Per item i: the state after recalling i, as [t_IN | cumsum(Mᵀ t_IN)], and t_IN·t = cT t_i + cF (Mᵀt)_i."""
    m = encoding_matrix(beta_enc, n_items)
    n_states = n_items + 1
    col = m[:, :n_items].T  # col[i] = M e_i (support on items before i)
    norm = np.sqrt((1.0 - gamma_ft) ** 2 + gamma_ft ** 2 * (col ** 2).sum(1))
    norm[norm == 0] = 1.0  # only item 0 at γ_FT = 1; item 0 has zero recall probability (column 0 of M is 0)
    t_in = ((1.0 - gamma_ft) * np.eye(n_states)[:n_items] + gamma_ft * col) / norm[:, None]
    after = np.concatenate([t_in, np.cumsum(t_in @ m, axis=1)], axis=1).astype(dtype)
    start = np.concatenate([np.eye(n_states)[:n_items], np.cumsum(m[:n_items], axis=1)], axis=1).astype(dtype)
    return after, start, (1.0 - gamma_ft) / norm, gamma_ft / norm


def _simulate_block(s0: np.ndarray, beta_rec: float, tables, n_items: int, max_recalls: int,
                    rng: np.random.Generator, out: np.ndarray) -> None:
    """Run the chains starting at ``s0`` and write their recalls (item index, -1 after the end) into ``out``."""
    after, start, c_t, c_f = tables
    n_states = n_items + 1
    state = start[s0]  # rows: [context t | cumulative activation cumsum(Mᵀt)]
    alive = np.arange(len(s0))
    for step in range(max_recalls):
        cum = state[:, n_states:]
        u = (1.0 - rng.random(len(alive), dtype=np.float32)) * cum[:, -1]  # in (0, Σf]: never an f = 0 item
        item = np.argmax(cum >= u[:, None], axis=1)
        going = item < n_items
        if not going.all():
            alive, item, state = alive[going], item[going], state[going]
            if len(alive) == 0:
                return
            cum = state[:, n_states:]
        out[alive, step] = item
        if beta_rec == 0.0:
            continue  # the context never drifts
        rows = np.arange(len(alive))
        t_i = state[rows, item].astype(np.float64)
        f_i = cum[rows, item] - np.where(item > 0, cum[rows, item - 1], 0.0)
        dot = c_t[item] * t_i + c_f[item] * f_i.astype(np.float64)  # t · t_IN
        norm = np.sqrt((1.0 - beta_rec) ** 2 + beta_rec ** 2 + 2.0 * beta_rec * (1.0 - beta_rec) * dot)
        incoming = after[item]
        incoming *= (beta_rec / norm).astype(state.dtype)[:, None]
        state *= ((1.0 - beta_rec) / norm).astype(state.dtype)[:, None]
        state += incoming


def simulate_recalls(beta_enc: float, beta_rec: float, gamma_ft: float, s0: int | Sequence[int] = START_POSITIONS,
                     *, n_sims: int = N_SIMS, n_items: int = N_ITEMS, max_recalls: int = MAX_RECALLS,
                     seed: int | Sequence[int] | np.random.Generator = 0) -> np.ndarray:
    """CMR free recall, ``P(i) = f_i/Σf`` with ``f = Mᵀt`` and context drift by β_rec, γ_FT (Ji-An et al. 2024): recalled items ``[s0, sim, step]``, -1 after the end."""
    _check_params(beta_enc, beta_rec, gamma_ft)
    starts = np.atleast_1d(np.asarray(s0, dtype=np.int64))
    if starts.ndim != 1 or starts.min() < 0 or starts.max() >= n_items:
        raise InputError(f"s0 must be start positions in [0, {n_items}), got {s0!r}")
    if n_sims < 1 or max_recalls < 1:
        raise InputError(f"n_sims and max_recalls must be >= 1, got {n_sims}, {max_recalls}")
    rng = np.random.default_rng(seed)
    tables = _recall_tables(beta_enc, gamma_ft, n_items, np.float32)
    chains = np.repeat(starts, n_sims)
    out = np.full((len(chains), max_recalls), -1, dtype=np.int16)
    for lo in range(0, len(chains), _BLOCK):
        _simulate_block(chains[lo:lo + _BLOCK], float(beta_rec), tables, n_items, max_recalls, rng,
                        out[lo:lo + _BLOCK])
    return out.reshape(len(starts), n_sims, max_recalls)


def trial_lag_fractions(recalls: np.ndarray, s0: int | Sequence[int], max_lag: int = MAX_LAG) -> np.ndarray:
    """Per trial, the share of its transitions (first one from s0) at each lag -max_lag..max_lag; NaN for a trial with no recall (authors' estimateCRP)."""
    recalls = np.asarray(recalls)
    starts = np.atleast_1d(np.asarray(s0))
    if recalls.ndim != 3 or recalls.shape[0] != len(starts):
        raise InputError(f"recalls must be [s0, sim, step] with {len(starts)} start positions, got {recalls.shape}")
    prev = np.concatenate([np.broadcast_to(starts[:, None, None], recalls.shape[:2] + (1,)), recalls[..., :-1]], -1)
    valid = recalls >= 0
    lag = np.where(valid, recalls.astype(np.int64) - prev, max_lag + 1)
    counts = np.stack([(lag == k).sum(-1) for k in range(-max_lag, max_lag + 1)], axis=-1).astype(np.float64)
    n = valid.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n[..., None] > 0, counts / n[..., None], np.nan)


def crp_from_fractions(fractions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lag-CRP = mean over s0 of (trial-mean fractions normalised to sum 1), with its delta-method standard error."""
    ok = ~np.isnan(fractions[..., 0])
    n = ok.sum(1)
    if (n < 2).any():
        raise InputError("each start position needs at least 2 trials with a recall to estimate a CRP")
    y = np.where(ok[..., None], fractions, 0.0)
    mean = y.sum(1) / n[:, None]
    total = mean.sum(-1, keepdims=True)
    crp_s0 = mean / total
    # influence of one trial on crp_s0[l] = (y[l] - crp_s0[l] Σ_l' y[l']) / total
    psi = (y - crp_s0[:, None, :] * y.sum(-1, keepdims=True)) / total[:, None, :]
    psi = np.where(ok[..., None], psi, 0.0)
    var = ((psi ** 2).sum(1) - n[:, None] * (psi.sum(1) / n[:, None]) ** 2) / (n[:, None] - 1) / n[:, None]
    return crp_s0.mean(0), np.sqrt(np.clip(var, 0.0, None).sum(0)) / len(crp_s0)


def closed_form_crp(beta_enc: float, beta_rec: float, s0: int | Sequence[int] = START_POSITIONS,
                    n_items: int = N_ITEMS, max_lag: int = MAX_LAG) -> np.ndarray:
    """Authors' closed-form CRP at γ_FT = 0 (est_cmr_crp.py getCRP): β_rec=0: Σ_j p(j)p(j+d), p = M[s0]/ΣM[s0]; β_rec=1: Σ_j [M^d]_{s0 j}/Σ[M^d]_{s0} · M[j,j+d]/ΣM[j] (d>0)."""
    if beta_rec not in (0.0, 1.0):
        raise InputError(f"a closed form exists only for beta_rec 0 or 1 (with gamma_ft 0), got {beta_rec!r}")
    m = encoding_matrix(beta_enc, n_items)
    lags = np.arange(-max_lag, max_lag + 1)
    row_sum = m.sum(1)
    step = np.divide(1.0, row_sum, out=np.zeros_like(row_sum), where=row_sum > 0)
    powers = [np.linalg.matrix_power(m, d) for d in range(1, max_lag + 1)] if beta_rec == 1.0 else []
    out = []
    for s in np.atleast_1d(np.asarray(s0)):
        crp = np.zeros(len(lags))
        if beta_rec == 0.0:
            p = m[s] / m[s].sum()  # recalls are i.i.d. from the fixed start context (absorbing state included)
            for k, d in enumerate(lags):
                crp[k] = (p[max(0, -d):len(p) - max(0, d)] * p[max(0, d):len(p) - max(0, -d)]).sum()
        else:
            for d, power in enumerate(powers, 1):
                reach = power[s] / power[s].sum()
                forward = np.zeros(len(m))
                forward[:len(m) - d] = np.diagonal(m, offset=d) * step[:len(m) - d]
                crp[max_lag + d] = (reach * forward).sum()
        out.append(crp / crp.sum())
    return np.mean(out, axis=0)


def cmr_crp(beta_enc: float, beta_rec: float, gamma_ft: float, *, s0: int | Sequence[int] = START_POSITIONS,
            n_sims: int = N_SIMS, n_items: int = N_ITEMS, max_recalls: int = MAX_RECALLS, max_lag: int = MAX_LAG,
            seed: int | Sequence[int] | np.random.Generator = 0,
            closed_form: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """CMR lag-CRP over lags -max_lag..max_lag averaged over s0, and its Monte-Carlo standard error (0 where the authors' closed form applies)."""
    lags = 2 * max_lag + 1
    if closed_form and gamma_ft == 0.0 and beta_rec in (0.0, 1.0):
        _check_params(beta_enc, beta_rec, gamma_ft)
        return closed_form_crp(beta_enc, beta_rec, s0, n_items, max_lag), np.zeros(lags)
    recalls = simulate_recalls(beta_enc, beta_rec, gamma_ft, s0, n_sims=n_sims, n_items=n_items,
                               max_recalls=max_recalls, seed=seed)
    return crp_from_fractions(trial_lag_fractions(recalls, s0, max_lag))


@dataclass(frozen=True)
class CMRGrid:
    """Simulated CMR lag-CRPs ``crp[β_enc, β_rec, γ_FT, lag]`` (each sums to 1) with Monte-Carlo errors ``se``."""

    crp: np.ndarray
    beta_enc: np.ndarray
    beta_rec: np.ndarray
    gamma_ft: np.ndarray
    lags: np.ndarray
    se: np.ndarray | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        shape = (len(self.beta_enc), len(self.beta_rec), len(self.gamma_ft), len(self.lags))
        if self.crp.shape != shape:
            raise InputError(f"grid crp has shape {self.crp.shape}, expected {shape} from its parameter axes")


def simulate_grid(beta_enc: Sequence[float] = GRID_BETA_ENC, beta_rec: Sequence[float] = GRID_BETA_REC,
                  gamma_ft: Sequence[float] = GRID_GAMMA_FT, *, seed: int = 0, n_jobs: int = 1,
                  n_sims: int = N_SIMS, max_recalls: int = MAX_RECALLS, verbose: bool = False) -> CMRGrid:
    """Simulate :func:`cmr_crp` at every grid point; cell (i, j, k) uses the seed sequence [seed, i, j, k], so results do not depend on n_jobs."""
    axes = [np.asarray(a, dtype=np.float64) for a in (beta_enc, beta_rec, gamma_ft)]
    shape = tuple(len(a) for a in axes)
    crp = np.zeros(shape + (2 * MAX_LAG + 1,))
    se = np.zeros_like(crp)
    rows = [(i, j) for i in range(shape[0]) for j in range(shape[1])]
    args = [(axes[0][i], axes[1][j], axes[2], (seed, i, j), n_sims, max_recalls) for i, j in rows]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(n_jobs) if n_jobs > 1 else _Serial() as pool:
        for done, ((i, j), (c, s)) in enumerate(zip(rows, pool.map(_grid_row, args)), 1):
            crp[i, j], se[i, j] = c, s
            if verbose:
                print(f"\r{done}/{len(rows)} rows, {time.perf_counter() - t0:.0f} s", end="", file=sys.stderr)
    meta = {"seed": seed, "n_sims": n_sims, "max_recalls": max_recalls, "n_items": N_ITEMS,
            "start_positions": list(START_POSITIONS), "seconds": round(time.perf_counter() - t0, 1)}
    return CMRGrid(crp, *axes, np.arange(-MAX_LAG, MAX_LAG + 1), se, meta)


def _grid_row(arg):
    beta_enc, beta_rec, gammas, key, n_sims, max_recalls = arg
    res = [cmr_crp(beta_enc, beta_rec, g, n_sims=n_sims, max_recalls=max_recalls, seed=[*key, k])
           for k, g in enumerate(gammas)]
    return np.array([r[0] for r in res]), np.array([r[1] for r in res])


class _Serial:
    """Stand-in for a process pool when n_jobs == 1."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    @staticmethod
    def map(fn, items):
        return map(fn, items)


def save_grid(grid: CMRGrid, path: str | os.PathLike) -> Path:
    """Write a grid as ``.npz`` (crp, se, parameter axes, lags, meta as JSON) atomically."""
    import json

    arrays = dict(crp=grid.crp, beta_enc=grid.beta_enc, beta_rec=grid.beta_rec, gamma_ft=grid.gamma_ft,
                  lags=grid.lags, meta=np.array(json.dumps(grid.meta)))
    if grid.se is not None:
        arrays["se"] = grid.se.astype(np.float32)

    def write(tmp: Path):
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)

    return atomic_write(path, write)


def load_grid(path: str | os.PathLike | None = None) -> CMRGrid:
    """Load a CRP grid (ours, or the authors' converted ``cmr_crp_grid.npz``); default: ``$WORKBENCH_CMR_GRID`` or ``data/cmr/cmr_crp_grid.npz``."""
    import json

    path = Path(path or os.environ.get("WORKBENCH_CMR_GRID", DEFAULT_GRID_PATH))
    if not path.is_file():
        raise InputError(f"no CMR grid at {path}: create it with `python -m workbench.episodic.cmr --make-grid {path}` "
                         "(about 16 min on 2 cores) or pass the path of an existing grid")
    with np.load(path, allow_pickle=False) as z:
        missing = {"crp", "beta_enc", "beta_rec", "gamma_ft", "lags"} - set(z.files)
        if missing:
            raise InputError(f"{path} is not a CMR grid: it lacks {sorted(missing)}")
        meta = json.loads(str(z["meta"])) if "meta" in z.files else {"source": str(path)}
        return CMRGrid(z["crp"], z["beta_enc"], z["beta_rec"], z["gamma_ft"], z["lags"],
                       z["se"].astype(np.float64) if "se" in z.files else None, meta)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m workbench.episodic.cmr --make-grid PATH [--seed S] [--jobs N]``."""
    parser = argparse.ArgumentParser(prog="python -m workbench.episodic.cmr", description=__doc__.splitlines()[0])
    parser.add_argument("--make-grid", metavar="PATH", required=True, help="write the full CRP grid to PATH (.npz)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="worker processes (default: all cores)")
    args = parser.parse_args(argv)
    grid = simulate_grid(seed=args.seed, n_jobs=args.jobs, verbose=True)
    print(f"\nwrote {save_grid(grid, args.make_grid)} in {grid.meta['seconds']} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

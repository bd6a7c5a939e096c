"""CMR simulator: encoding, deterministic limits, an exact expectation, and the authors' grid within Monte-Carlo error."""

from __future__ import annotations

import numpy as np
import pytest

from workbench.episodic import cmr
from workbench.episodic.cmr import (
    CMRGrid, closed_form_crp, cmr_crp, crp_from_fractions, encoding_matrix, load_grid, save_grid, simulate_grid,
    simulate_recalls, trial_lag_fractions,
)
from workbench.errors import InputError

# Tolerance for comparing two independent Monte-Carlo estimates of one CRP entry: |ours - theirs| <= Z_MAX * σ with
# σ = sqrt(2) * max(se, SE_FLOOR). se is the delta-method standard error of our estimate (from the spread of the
# per-trial lag fractions, i.e. the multinomial variance of the counts), assumed equal for the authors' run.
# SE_FLOOR = 1e-5 is the weight of a single transition in one 1-recall trial, 1 / (1000 trials * 20 s0 * ~5 lags
# inside the sum): below it an entry is a count of rare events and its se estimate is unreliable.
# Z_MAX = 5 leaves room for the authors' noise, measured to be up to ~1.7x ours (their 10 γ_FT replicates at
# β_rec = 0, where γ_FT has no effect, deviate from the exact expectation with mean z² 1.5 over the grid).
Z_MAX = 5.0
SE_FLOOR = 1e-5


def test_encoding_matrix_is_the_resolvent_of_the_shift():
    n = 12
    shift = np.eye(n + 1, k=1)
    for beta in (0.05, 0.3, 0.6, 1.0):
        expected = np.linalg.inv(np.eye(n + 1) - (1 - beta) * shift) @ shift
        np.testing.assert_allclose(encoding_matrix(beta, n), expected, atol=1e-12)
    np.testing.assert_array_equal(encoding_matrix(1.0, n), shift)


def test_pure_forward_chaining_recalls_the_list_in_order():
    # β_enc = 1, β_rec = 1, γ_FT = 0: the context is the last item, M = T: recall s0+1, s0+2, ... deterministically
    rec = simulate_recalls(1.0, 1.0, 0.0, [0, 7], n_sims=3, max_recalls=50)
    np.testing.assert_array_equal(rec[0, 0], np.arange(1, 51))
    np.testing.assert_array_equal(rec[1, 2], np.arange(8, 58))
    # and near the end of the list the chain is absorbed: from s0 = 80 only items 81..99 come out
    tail = simulate_recalls(1.0, 1.0, 0.0, 80, n_sims=2, max_recalls=50)[0, 0]
    np.testing.assert_array_equal(tail[:19], np.arange(81, 100))
    assert (tail[19:] == -1).all()


def test_backward_context_repeats_the_first_recall():
    # β_enc = 1, γ_FT = 1: recalling s0+1 reinstates s0, so s0+1 comes back for ever: lag +1 once, then lag 0
    crp, se = cmr_crp(1.0, 0.5, 1.0, n_sims=20)
    expected = np.zeros(17)
    expected[8], expected[9] = 49 / 50, 1 / 50  # the authors' grid holds exactly this (50 recalls per trial)
    np.testing.assert_allclose(crp, expected, atol=1e-12)
    np.testing.assert_allclose(se, 0.0, atol=1e-12)


def _static_context_expectation(beta_enc: float, max_recalls: int = 50, n: int = 100, max_lag: int = 8):
    """Exact expected CRP when β_rec = 0: recalls are i.i.d. from p = M[s0]/ΣM[s0] until the absorbing state."""
    m = encoding_matrix(beta_enc, n)
    lags = np.arange(-max_lag, max_lag + 1)
    out = []
    for s0 in range(20):
        p = m[s0] / m[s0].sum()
        stop, q = p[n], p[:n] / (1 - p[n])
        pair = np.array([(q[max(0, -d):n - max(0, d)] * q[max(0, d):n - max(0, -d)]).sum() for d in lags])
        first = np.array([q[s0 + d] if 0 <= s0 + d < n else 0.0 for d in lags])
        length = np.arange(1, max_recalls + 1)
        w = (1 - stop) ** length * stop
        w[-1] = (1 - stop) ** max_recalls
        y = sum(wl * (first + (ln - 1) * pair) / ln for wl, ln in zip(w / w.sum(), length))
        out.append(y / y.sum())
    return np.mean(out, axis=0)


@pytest.mark.parametrize("beta_enc,gamma_ft", [(0.05, 0.3), (0.5, 0.7)])
def test_static_context_matches_its_exact_expectation(beta_enc, gamma_ft):
    crp, se = cmr_crp(beta_enc, 0.0, gamma_ft, seed=11)
    z = (crp - _static_context_expectation(beta_enc)) / np.maximum(se, SE_FLOOR)
    assert np.abs(z).max() < 4.5, z
    assert np.mean(z ** 2) < 2.5, z  # the standard error is right, not merely generous


def test_closed_form_cells_equal_the_authors_grid(authors_grid):
    g = authors_grid
    for i, beta_enc in enumerate(g.beta_enc):
        for j in (0, len(g.beta_rec) - 1):
            ours = closed_form_crp(beta_enc, g.beta_rec[j])
            np.testing.assert_allclose(ours, g.crp[i, j, 0], atol=1e-12, err_msg=f"beta_enc={beta_enc}")


# six simulated grid points spread over the grid (β_enc, β_rec, γ_FT indices), at the full 1000 x 20 trials
CELLS = [(11, 15, 3), (19, 10, 0), (0, 5, 5), (3, 20, 10), (9, 0, 4), (16, 3, 0)]


@pytest.mark.parametrize("cell", CELLS)
def test_simulation_reproduces_the_authors_grid(authors_grid, cell):
    g = authors_grid
    crp, se = cmr_crp(g.beta_enc[cell[0]], g.beta_rec[cell[1]], g.gamma_ft[cell[2]], seed=[2024, *cell])
    z = (crp - g.crp[cell]) / (np.sqrt(2) * np.maximum(se, SE_FLOOR))
    assert np.abs(z).max() < Z_MAX, np.round(z, 2)
    assert np.abs(crp - g.crp[cell]).max() < 0.004


def test_hundred_recalls_would_not_reproduce_the_grid(authors_grid):
    # the convention that matters: the public script's max_samps = 100 misses the published grid at this cell
    g = authors_grid
    crp, se = cmr_crp(1.0, 0.5, 0.0, max_recalls=100, seed=5)
    z = (crp - g.crp[19, 10, 0]) / (np.sqrt(2) * np.maximum(se, SE_FLOOR))
    assert np.abs(z).max() > 2 * Z_MAX


def test_our_grid_matches_the_authors_grid(our_grid, authors_grid):
    ours, theirs = our_grid, authors_grid
    for name in ("beta_enc", "beta_rec", "gamma_ft", "lags"):
        np.testing.assert_allclose(getattr(ours, name), getattr(theirs, name), atol=1e-12)
    np.testing.assert_allclose(ours.crp.sum(-1), 1.0, atol=1e-9)
    diff = np.abs(ours.crp - theirs.crp)
    z = diff / (np.sqrt(2) * np.maximum(ours.se, SE_FLOOR))
    # measured (seed 0): max 0.0050, median 1.9e-4, 6 of 78 540 entries beyond Z_MAX, mean z² 1.40
    assert diff.max() < 0.0075 and np.median(diff) < 3e-4
    assert (z > Z_MAX).mean() < 3e-4  # a handful of entries in the authors' heavier noise tail
    assert np.mean(z ** 2) < 1.7


def test_trial_fractions_follow_the_authors_normalisation():
    # one trial from s0 = 3 recalling 4, 5, 30, 29: lags +1, +1, +25 (outside ±8 but counted), -1
    rec = np.array([[[4, 5, 30, 29, -1], [-1, -1, -1, -1, -1]]])
    y = trial_lag_fractions(rec, [3])
    assert y[0, 0, 8 + 1] == pytest.approx(0.5) and y[0, 0, 8 - 1] == pytest.approx(0.25)
    assert y[0, 0].sum() == pytest.approx(0.75)
    assert np.isnan(y[0, 1]).all()  # a trial without recall is dropped, not counted as zeros


def test_seeded_and_independent_of_workers(tmp_path):
    a = cmr_crp(0.4, 0.6, 0.2, n_sims=50, seed=3)[0]
    np.testing.assert_array_equal(a, cmr_crp(0.4, 0.6, 0.2, n_sims=50, seed=3)[0])
    assert not np.array_equal(a, cmr_crp(0.4, 0.6, 0.2, n_sims=50, seed=4)[0])
    kw = dict(beta_enc=[0.3, 0.6], beta_rec=[0.0, 0.5], gamma_ft=[0.0, 0.2], n_sims=40, seed=1)
    serial, parallel = simulate_grid(**kw), simulate_grid(**kw, n_jobs=2)
    np.testing.assert_array_equal(serial.crp, parallel.crp)
    loaded = load_grid(save_grid(serial, tmp_path / "g.npz"))
    np.testing.assert_array_equal(loaded.crp, serial.crp)
    np.testing.assert_allclose(loaded.se, serial.se, rtol=1e-6)
    assert loaded.meta["n_sims"] == 40 and loaded.meta["max_recalls"] == cmr.MAX_RECALLS


def test_bad_input_says_what_to_do(tmp_path):
    with pytest.raises(InputError, match="beta_enc must be in"):
        cmr_crp(0.0, 0.5, 0.5)
    with pytest.raises(InputError, match="gamma_ft must be in"):
        simulate_recalls(0.5, 0.5, 1.5, 0)
    with pytest.raises(InputError, match="start positions"):
        simulate_recalls(0.5, 0.5, 0.5, 100)
    with pytest.raises(InputError, match="closed form exists only"):
        closed_form_crp(0.5, 0.5)
    with pytest.raises(InputError, match="--make-grid"):
        load_grid(tmp_path / "missing.npz")
    with pytest.raises(InputError, match="expected"):
        CMRGrid(np.zeros((2, 2, 2, 17)), np.zeros(2), np.zeros(3), np.zeros(2), np.arange(17))
    with pytest.raises(InputError, match="at least 2 trials"):
        crp_from_fractions(np.full((1, 3, 17), np.nan))

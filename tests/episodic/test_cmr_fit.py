"""CMR fits: the authors' GPT-2 small results, our own grid, parameter recovery, and the edge cases."""

from __future__ import annotations

import time
from functools import lru_cache

import numpy as np
import pytest

from workbench.episodic.cmr import cmr_crp
from workbench.episodic.cmr_fit import CMR_LIKE, CMR_LIKE_STRICT, cmr_distance, fit_cmr
from workbench.errors import InputError

LAGS17 = np.arange(-8, 9)

# Published fits of GPT-2 small (Ji-An et al. 2024; METHODS.md §3): (layer, head) -> distance, β_enc, β_rec, γ_FT
PAPER = {(5, 1): (0.006, 0.60, 0.75, 0.3), (5, 5): (0.007, 0.60, 0.95, 0.2), (1, 11): (0.004, 1.00, 0.00, 0.0)}


def test_gpt2_small_fits_match_the_paper_with_the_authors_grid(authors_grid, gpt2_scores):
    fit = fit_cmr(gpt2_scores["crp_scores"], gpt2_scores["lags"], grid=authors_grid)
    for (layer, head), (dist, b_enc, b_rec, gamma) in PAPER.items():
        assert fit.distance[layer, head] == pytest.approx(dist, abs=5e-4)
        assert (fit.beta_enc[layer, head], fit.beta_rec[layer, head], fit.gamma_ft[layer, head]) == pytest.approx(
            (b_enc, b_rec, gamma), abs=1e-9)
    assert fit.scale[5, 1] == pytest.approx(44.3, abs=0.05)
    assert fit.cmr_like().sum() == 68 and fit.cmr_like(CMR_LIKE_STRICT).sum() == 44
    np.testing.assert_array_equal(fit.lags, np.arange(-5, 6))
    # the fitted curve is the scaled CRP in the head's own units: its minimum sits on the head's minimum
    head = gpt2_scores["crp_scores"][5, 1, 3:14]
    assert fit.curve[5, 1].min() == pytest.approx(head.min())
    assert fit.curve[5, 1].max() == pytest.approx(head.max())


def test_gpt2_small_fits_with_our_grid(our_grid, gpt2_scores):
    fit = fit_cmr(gpt2_scores["crp_scores"], gpt2_scores["lags"], grid=our_grid)
    for (layer, head), (dist, b_enc, b_rec, gamma) in PAPER.items():
        assert fit.distance[layer, head] == pytest.approx(dist, abs=1e-3)
        assert (fit.beta_enc[layer, head], fit.beta_rec[layer, head], fit.gamma_ft[layer, head]) == pytest.approx(
            (b_enc, b_rec, gamma), abs=1e-9)
    assert fit.scale[5, 1] == pytest.approx(44.3, abs=0.3)
    assert fit.cmr_like().sum() == 68
    # 45, not 44: L9H2 sits on the threshold (0.1017 with the authors' grid, 0.0976 with ours)
    assert fit.cmr_like(CMR_LIKE_STRICT).sum() == 45 and fit.distance[9, 2] == pytest.approx(0.1, abs=0.005)


def test_grid_search_of_all_gpt2_heads_is_fast(authors_grid, gpt2_scores):
    fit_cmr(gpt2_scores["crp_scores"], gpt2_scores["lags"], grid=authors_grid)  # warm caches
    t0 = time.perf_counter()
    fit_cmr(gpt2_scores["crp_scores"], gpt2_scores["lags"], grid=authors_grid)
    assert time.perf_counter() - t0 < 0.5


def test_distance_is_the_papers_formula():
    rng = np.random.default_rng(0)
    a, c = rng.normal(size=11), rng.dirichlet(np.ones(11))
    ap = a - a.min()
    s = ap.max() / (c - c.min()).max()
    expected = np.mean(((c - c.min()) * s - ap) ** 2) / np.var(ap)
    d, scale = cmr_distance(a, c)
    assert d == pytest.approx(expected, rel=1e-12) and scale == pytest.approx(s, rel=1e-12)
    # invariant to the head's offset and scale: the curve's shape is what is fitted
    assert cmr_distance(3.0 * a - 7.0, c)[0] == pytest.approx(expected, rel=1e-9)


def test_vectorised_fit_equals_an_exhaustive_loop(authors_grid, gpt2_scores):
    g = authors_grid
    head = gpt2_scores["crp_scores"][7, 2]
    fit = fit_cmr(head, gpt2_scores["lags"], grid=g)
    c = g.crp[..., 3:14].reshape(-1, 11)
    d = np.array([cmr_distance(head[3:14], ci / ci.sum())[0] for ci in c])
    assert fit.distance == pytest.approx(d.min(), rel=1e-9)
    i, j, k = np.unravel_index(d.argmin(), g.crp.shape[:3])
    assert (fit.beta_enc, fit.beta_rec, fit.gamma_ft) == (g.beta_enc[i], g.beta_rec[j], g.gamma_ft[k])
    assert isinstance(fit.distance, float) and fit.curve.shape == (11,)


def test_lag_axis_and_batch_shape(authors_grid, gpt2_scores):
    scores = gpt2_scores["crp_scores"]
    a = fit_cmr(scores, gpt2_scores["lags"], grid=authors_grid)
    b = fit_cmr(np.moveaxis(scores, -1, 0), gpt2_scores["lags"], axis=0, grid=authors_grid)
    np.testing.assert_array_equal(a.distance, b.distance)
    assert a.curve.shape == (12, 12, 11)


def test_refinement_is_never_worse_and_stays_in_bounds(authors_grid, gpt2_scores):
    heads = gpt2_scores["crp_scores"][[5, 5, 1, 7], [1, 5, 11, 2]]  # L5H1, L5H5, L1H11, L7H2
    grid_fit = fit_cmr(heads, gpt2_scores["lags"], grid=authors_grid)
    fine = fit_cmr(heads, gpt2_scores["lags"], grid=authors_grid, refine=True)
    assert (fine.distance <= grid_fit.distance + 1e-12).all()
    assert fine.refined.any()
    assert fine.distance[0] == pytest.approx(0.0054, abs=5e-4)  # L5H1: 0.0061 on the grid
    assert ((fine.beta_enc >= 0.05) & (fine.beta_enc <= 1) & (fine.gamma_ft >= 0) & (fine.gamma_ft <= 1)).all()
    kept = ~fine.refined
    np.testing.assert_array_equal(fine.distance[kept], grid_fit.distance[kept])


# Recovery: lag curves simulated at known parameters (fresh seeds, not the grid's), as a head would show them:
# an offset and scale plus Gaussian noise of 2% of the curve's range on every lag, the SEM/range of the strongest
# GPT-2 CMR-like heads (L5H1 2.0%, L5H5 2.4%, L1H11 2.1%). Measured absolute errors over 4 x 25 draws (median /
# 90th percentile / max): β_enc 0 / 0.05 / 0.1, β_rec 0.05 / 0.2 / 0.4, γ_FT 0 / 0.1 / 0.2; the tolerances below
# round these up: β_enc and γ_FT are well determined, β_rec trades off against γ_FT on lags -5..5.
TRUTHS = [(0.6, 0.75, 0.3), (0.3, 0.5, 0.0), (0.8, 0.9, 0.2), (0.45, 0.3, 0.5)]


@lru_cache(maxsize=None)
def _truth(params):
    return cmr_crp(*params, seed=[99, *np.round(np.array(params) * 100).astype(int)])[0]


def _heads_like(params, noise, n, rng):
    crp = _truth(params)
    span = np.ptp(crp[3:14])
    return -3.0 + 20.0 * crp / span + rng.normal(0.0, noise * 20.0, (n, 17))


def test_parameters_are_recovered_without_noise(our_grid):
    rng = np.random.default_rng(0)
    for params in TRUTHS:
        fit = fit_cmr(_heads_like(params, 0.0, 1, rng), LAGS17, grid=our_grid)
        assert (fit.beta_enc[0], fit.beta_rec[0], fit.gamma_ft[0]) == pytest.approx(params, abs=1e-9)
        assert fit.distance[0] < 0.002


def test_parameters_are_recovered_with_head_like_noise(our_grid):
    rng = np.random.default_rng(1)
    errors = []
    for params in TRUTHS:
        fit = fit_cmr(_heads_like(params, 0.02, 25, rng), LAGS17, grid=our_grid)
        assert (fit.distance < CMR_LIKE_STRICT).all()
        errors.append(np.abs(np.stack([fit.beta_enc, fit.beta_rec, fit.gamma_ft], -1) - params))
    errors = np.concatenate(errors)
    median, q90 = np.median(errors, 0), np.quantile(errors, 0.9, axis=0)
    assert median[0] <= 0.05 and q90[0] <= 0.1  # β_enc
    assert median[2] <= 0.1 and q90[2] <= 0.2  # γ_FT
    assert median[1] <= 0.15 and q90[1] <= 0.5  # β_rec


def test_perfect_induction_head_is_cmr_like_with_a_peak_at_plus_one(our_grid):
    head = np.zeros(16)
    head[8 + 1] = 1.0  # all score at lag +1, lags -8..7 as in the GPT-2 arrays
    fit = fit_cmr(head, np.arange(-8, 8))  # the default grid: ours, from data/cmr
    assert fit.lags[np.argmax(fit.curve)] == 1
    assert fit.cmr_like() and fit.distance < 1e-6
    assert (fit.beta_enc, fit.beta_rec, fit.gamma_ft) == (1.0, 1.0, 0.0)  # pure forward chaining


def test_flat_and_missing_heads(our_grid):
    heads = np.stack([np.full(17, 0.3), np.r_[np.full(5, np.nan), np.ones(12)], np.eye(17)[9]])
    fit = fit_cmr(heads, LAGS17, grid=our_grid)
    assert fit.distance[0] == np.inf and not fit.cmr_like()[0]  # flat: no lag structure, never CMR-like
    assert np.isnan([fit.beta_enc[0], fit.beta_rec[0], fit.gamma_ft[0], fit.scale[0]]).all()
    np.testing.assert_array_equal(fit.curve[0], np.full(11, 0.3))
    assert np.isnan(fit.distance[1]) and np.isnan(fit.curve[1]).all()  # NaN at a fitted lag: no fit
    assert fit.cmr_like()[2]


def test_bad_input_says_what_to_do(authors_grid):
    with pytest.raises(InputError, match="lack lags"):
        fit_cmr(np.zeros(9), np.arange(-4, 5), grid=authors_grid)
    with pytest.raises(InputError, match="must list the 17 lag values"):
        fit_cmr(np.zeros(17), np.arange(-8, 8), grid=authors_grid)
    with pytest.raises(InputError, match="grid has no CRP at lags"):
        fit_cmr(np.zeros(21), np.arange(-10, 11), grid=authors_grid, fit_lags=range(-9, 10))
    assert CMR_LIKE == 0.5

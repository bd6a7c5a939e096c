"""Lag-CRP aggregation and summaries on constructed inputs with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from workbench.episodic.lag_crp import (
    aggregate_lag_curves, conditional_response_probability, contiguity, forward_asymmetry, lag_values,
    primacy_recency, serial_position_curve,
)
from workbench.errors import InputError


def test_lag_values_reads_first_occurrence_plus_lag_causally():
    # 1 sequence, 2 heads, 6 positions: matrix[h, i, j] = 100 h + 10 i + j
    h, i, j = np.meshgrid(np.arange(2), np.arange(6), np.arange(6), indexing="ij")
    matrix = (100 * h + 10 * i + j)[None].astype(float)
    values = lag_values(matrix, query_pos=np.array([[4, 5]]), first_pos=np.array([[1, 2]]), lags=[-2, -1, 0, 1, 3, 4])
    assert values.shape == (1, 2, 2, 6)
    np.testing.assert_array_equal(values[0, 1, 0], [np.nan, 140, 141, 142, 144, np.nan])  # key 5 > query 4: hidden
    np.testing.assert_array_equal(values[0, 0, 1], [50, 51, 52, 53, 55, np.nan])  # key 6 is off the sequence


def test_mean_and_sem_skip_missing_entries():
    values = np.array([[[[1.0, np.nan], [3.0, 2.0]]], [[[5.0, 4.0], [np.nan, 6.0]]]])  # [seq=2, head=1, query=2, lag=2]
    curve = aggregate_lag_curves(values, [0, 1], n_boot=0)
    np.testing.assert_allclose(curve.mean[0], [3.0, 4.0])
    np.testing.assert_allclose(curve.sem[0], [np.std([1, 3, 5], ddof=1) / np.sqrt(3), np.std([2, 4, 6], ddof=1) / np.sqrt(3)])
    np.testing.assert_array_equal(curve.n[0], [3, 3])
    assert curve.ci_low is None


def test_bootstrap_interval_resamples_sequences():
    rng = np.random.default_rng(0)
    seq_effect = rng.normal(0.0, 1.0, (60, 1, 1, 1))  # queries within a sequence share its offset
    values = seq_effect + rng.normal(0.0, 0.1, (60, 3, 40, 5))
    curve = aggregate_lag_curves(values, range(-2, 3), n_boot=2000, seed=1)
    width = curve.ci_high - curve.ci_low
    # the interval reflects the 60 sequences (2 * 1.96 / sqrt(60) ~ 0.51), not the 2400 correlated queries
    assert 0.4 < width.mean() < 0.62
    assert (curve.sem < width / 8).all()  # the pooled SEM ignores that correlation
    again = aggregate_lag_curves(values, range(-2, 3), n_boot=2000, seed=1)
    np.testing.assert_array_equal(again.ci_low, curve.ci_low)
    assert ((curve.ci_low < curve.mean) & (curve.mean < curve.ci_high)).all()


def test_classic_crp_divides_chosen_by_available_mass():
    n_seq, n_query, n_study = 2, 10, 10
    first = np.tile(np.arange(n_study), (n_seq, 1))
    # uniform attention over the study list: every available lag receives 1/n_study, so the CRP is flat
    uniform = np.full((n_seq, 1, n_query, n_study), 1.0 / n_study)
    lags, crp = conditional_response_probability(uniform, first, max_lag=3)
    np.testing.assert_allclose(crp[0], 0.1)
    # all attention on the next study item: CRP(+1) = 1 (the last item has no +1, so it is not an opportunity)
    nxt = np.zeros((n_seq, 1, n_query, n_study))
    nxt[:, 0, np.arange(9), np.arange(1, 10)] = 1.0
    lags, crp = conditional_response_probability(nxt, first, max_lag=3)
    np.testing.assert_allclose(crp[0], np.where(lags == 1, 1.0, 0.0))
    # excluding positions from the available set (Kahana's "already recalled") raises the CRP of the others
    available = np.ones((n_seq, n_query, n_study), bool)
    available[:, :, 0] = False
    lags, crp = conditional_response_probability(uniform, first, max_lag=3, available=available)
    np.testing.assert_allclose(crp[0], 0.1)  # chosen and available both lose position 0
    with pytest.raises(InputError, match="available must be"):
        conditional_response_probability(uniform, first, available=available[:, :, :5])


def test_contiguity_and_asymmetry():
    lags = np.arange(-4, 5)
    curve = np.array([0.0, 0.0, 1.0, 2.0, 9.0, 4.0, 3.0, 0.0, 0.0])
    assert contiguity(curve, lags) == pytest.approx((1 + 2 + 4 + 3) / 4 - 0.0)
    assert forward_asymmetry(curve, lags) == pytest.approx(4.0 - 2.0)
    assert forward_asymmetry(curve, lags, k=[1, 2]) == pytest.approx(((4 - 2) + (3 - 1)) / 2)
    batch = np.stack([curve, curve[::-1]])
    np.testing.assert_allclose(forward_asymmetry(batch, lags), [2.0, -2.0])
    with pytest.raises(InputError, match="no values at lags"):
        forward_asymmetry(curve, lags, k=6)


def test_serial_position_primacy_recency():
    n_study = 12
    u_shape = np.r_[0.3, 0.2, 0.15, np.full(n_study - 6, 0.05), 0.1, 0.2, 0.4]
    attn = np.broadcast_to(u_shape, (4, 2, 5, n_study)).copy()
    attn[0, 0, 0, :] = np.nan  # a missing row is skipped
    mean, sem = serial_position_curve(attn)
    np.testing.assert_allclose(mean, np.broadcast_to(u_shape, (2, n_study)))
    np.testing.assert_allclose(sem, 0.0, atol=1e-12)
    primacy, recency = primacy_recency(mean, k=3)
    np.testing.assert_allclose(primacy, (0.3 + 0.2 + 0.15) / 3 - 0.05)
    np.testing.assert_allclose(recency, (0.1 + 0.2 + 0.4) / 3 - 0.05)
    with pytest.raises(InputError, match="needs at least 7"):
        primacy_recency(mean[..., :6], k=3)

"""Per-head episodic analysis: temporal columns on a hand-made capture (exact numbers), head_effects and the
registered ``episodic`` detector on a tiny model, and the summary table's depth profile."""

from __future__ import annotations

import numpy as np
import pytest

import workbench as wb
from tests.conftest import tiny_llama
from workbench.episodic.capture import LAGS, ListCapture
from workbench.episodic.detector import COLUMNS
from workbench.episodic.heads import head_effects, temporal_columns
from workbench.episodic.summary import depth_profile, head_rows, summary_table

SMALL = {"cmr_items": 8, "cmr_batch": 3, "temporal_items": 8, "temporal_batch": 3, "n_boot": 50}


def _forward_chain_capture(n_items=9, n_seq=2, n_layers=1, n_heads=2) -> ListCapture:
    """Head 0 puts all its attention on the study item after the current one (none for the last); head 1 is uniform."""
    test_item = np.stack([np.random.default_rng(s).permutation(n_items) for s in range(n_seq)])
    study = np.zeros((n_seq, n_layers, n_heads, n_items, n_items))
    for b in range(n_seq):
        for q, item in enumerate(test_item[b]):
            if item + 1 < n_items:
                study[b, :, 0, q, item + 1] = 1.0
    study[:, :, 1] = 1.0 / n_items
    nan = np.full((n_seq, n_layers, n_heads, n_items, len(LAGS)), np.nan)
    return ListCapture(np.array(LAGS), list(range(n_layers)), nan, nan, study,
                       np.full((n_seq, n_items, n_items), 1.0 / n_items), test_item, "exact")


def test_temporal_columns_of_a_forward_chain_head_are_exact():
    n = 9
    lags, crp, cols = temporal_columns(_forward_chain_capture(n), max_lag=8)
    assert lags.tolist() == list(range(-8, 9))
    np.testing.assert_allclose(crp[0, 0], np.where(lags == 1, 1.0, 0.0))  # every available +1 opportunity chosen
    np.testing.assert_allclose(crp[0, 1][lags != 0], 1.0 / n)  # uniform: same CRP at every lag
    np.testing.assert_allclose(cols["asymmetry"][0], [1.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(cols["contiguity"][0], [0.25, 0.0], atol=1e-12)  # mean(1,0,0,0) - 0
    # serial position: item 0 never attended, every other item gets 1 from one of n queries
    np.testing.assert_allclose(cols["primacy"][0], [(0 + 2 / n) / 3 - 1 / n, 0.0], atol=1e-12)
    np.testing.assert_allclose(cols["recency"][0], [0.0, 0.0], atol=1e-12)


def test_crp_can_exclude_items_already_tested():
    cap = _forward_chain_capture(9, n_seq=1)
    cap.test_item[:] = np.arange(9)  # same order: every earlier item has been tested already
    cap.study_attn[:] = 0.0
    cap.study_attn[0, 0, 0, np.arange(8), np.arange(1, 9)] = 1.0  # head 0 attends to the next item (lag +1)
    cap.study_attn[0, 0, 1, np.arange(1, 9), np.arange(8)] = 1.0  # head 1 attends to the previous item (lag -1)
    lags, plain = cap.crp(max_lag=3)
    _, fresh = cap.crp(max_lag=3, exclude_tested=True)
    np.testing.assert_allclose(plain[0, 1], np.where(lags == -1, 1.0, 0.0))
    assert np.isnan(fresh[0, 1][lags <= 0]).all()  # no untested item lies behind: no opportunity
    np.testing.assert_allclose(fresh[0, 0][lags > 0], np.where(lags[lags > 0] == 1, 1.0, 0.0))
    np.testing.assert_allclose(fresh[0, 1][lags > 0], 0.0)


@pytest.fixture(scope="module")
def tiny():
    return tiny_llama(seed=4, n_layers=3)


def test_head_effects_and_detector_agree_on_a_tiny_model(tiny):
    effects = head_effects(tiny, seed=1, settings=SMALL)
    assert set(effects.columns) == set(COLUMNS)
    assert all(np.shape(v) == (3, 4) for v in effects.columns.values())
    assert effects.score_curve.mean.shape == (3, 4, len(LAGS)) and effects.score_curve.ci_low is not None
    ok = np.isfinite(effects.score_curve.mean)  # lag -8 of 8 items never exists
    assert ok[..., 1:].all() and (effects.score_curve.ci_low[ok] <= effects.score_curve.ci_high[ok]).all()
    assert effects.position_mean.shape == (3, 4, 8) and effects.crp.shape == (3, 4, 15)  # 8 items: |lag| <= 7
    np.testing.assert_array_equal(effects.columns["cmr_distance"], effects.fit.distance)
    assert effects.repeat_recall_curve.mean.shape == effects.recall_curve.mean.shape == (len(LAGS),)
    assert effects.stimuli["cmr"]["n_items"] == 8 and effects.stimuli["temporal"]["kind"].startswith("frequent")
    atlas = wb.scan(tiny, ["episodic"], seed=1, settings=SMALL)
    for name in COLUMNS:
        np.testing.assert_allclose(atlas.matrix(name), effects.columns[name], equal_nan=True)
    assert "episodic_cmr" in atlas.meta["stimuli"]


def test_depth_profile_and_summary_rows():
    mask = np.zeros((6, 2), bool)
    mask[[0, 2, 3, 5], 0] = True  # thirds: layers 0-1, 2-3, 4-5
    prof = depth_profile(mask)
    assert (prof["early"], prof["middle"], prof["late"]) == (0.25, 0.5, 0.25)
    np.testing.assert_allclose(prof["mean_depth"], (0 + 2 + 3 + 5) / 5 / 4)
    d = np.full((6, 2), 2.0)
    d[0, 0], d[3, 1], d[5, 0] = 0.05, 0.3, 0.01
    cols = {"cmr_distance": d, "cmr_beta_enc": np.full((6, 2), 0.5), "cmr_beta_rec": np.full((6, 2), 0.9),
            **{k: np.zeros((6, 2)) for k in ("contiguity", "asymmetry", "primacy", "recency")}}
    induction = np.zeros((6, 2))
    induction[5, 0] = induction[3, 1] = 0.8
    table = summary_table(cols, induction).set_index("metric")["value"]
    assert table["CMR-like heads (distance < 0.5)"] == 3 and table["CMR-like heads (distance < 0.1)"] == 2
    assert table["induction heads (score > 0.3)"] == 2 and table["  of them CMR-like (< 0.5 / < 0.1)"] == "2 / 1"
    assert table["share of heads < 0.1 with both betas in the human range"] == 1.0
    assert len(head_rows(cols)) < len(head_rows(cols, induction))

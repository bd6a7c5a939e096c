"""Capture for list stimuli on tiny random models: exact path vs full patterns, streamed path vs exact path,
and a hand-set perfect induction head end to end through the lag step and the CMR fit."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests.conftest import tiny_gemma3, tiny_llama
from workbench.episodic.capture import LAGS, PairScoreRecorder, capture_lists, item_keys
from workbench.episodic.cmr_fit import fit_cmr
from workbench.errors import InputError
from workbench.interventions import InterventionHook, ZeroQuery
from workbench.models.attention import AttentionHook, hooks_active
from workbench.patterns import capture
from workbench.stimuli.lists import RecallLists, frequent_token_lists, random_token_lists


@pytest.fixture(scope="module")
def llama():
    return tiny_llama(seed=3, d_head=32)


def _reference(subject, lists, lags):
    """Scores/attention at the lag keys and study keys from the full exact patterns (float32 softmax) and full logits."""
    cap = capture(subject, lists.input_ids)
    pats = torch.stack([cap.patterns[l] for l in range(subject.n_layers)], dim=1).double()  # (B, L, H, N, N)
    keys, _ = item_keys(lists, lags)
    b, q = lists.test_pos.shape
    rows = pats.gather(3, lists.test_pos[:, None, None, :, None].expand(-1, *pats.shape[1:3], q, pats.shape[-1]))
    at = rows.gather(4, keys.clamp(min=0)[:, None, None].expand(-1, *pats.shape[1:3], -1, -1))
    at = torch.where((keys >= 0)[:, None, None], at, math.nan)
    study = rows.gather(4, lists.study_pos[:, None, None, None, :].expand(-1, *pats.shape[1:3], q, -1))
    probs = torch.softmax(subject.logits(lists.input_ids).double(), -1)
    recall = probs.gather(1, lists.test_pos[..., None].expand(-1, -1, probs.shape[-1]))
    recall = recall.gather(2, lists.study_ids[:, None, :].expand(-1, q, -1))
    return at.numpy(), study.numpy(), recall.numpy()


@pytest.mark.parametrize("order", ["same", "permuted"])
def test_exact_path_matches_full_patterns(llama, order):
    lists = random_token_lists(llama, n_items=8, batch=3, seed=1, order=order)
    cap = capture_lists(llama, lists, method="exact", batch_size=2)
    attn, study, recall = _reference(llama, lists, LAGS)
    assert cap.scores.shape == (3, 2, 4, 8, 16) and cap.study_attn.shape == (3, 2, 4, 8, 8)
    np.testing.assert_array_equal(np.isnan(cap.attn), np.isnan(attn))
    np.testing.assert_allclose(cap.attn, attn, atol=2e-6, equal_nan=True)
    np.testing.assert_allclose(cap.study_attn, study, atol=2e-6)
    np.testing.assert_allclose(cap.recall_prob, recall, rtol=1e-4, atol=1e-7)
    # within a row, score differences are log-attention differences (same softmax)
    s, a = cap.scores[..., [7, 9]], np.log(attn[..., [7, 9]])
    ok = np.isfinite(s).all(-1)
    np.testing.assert_allclose((s[..., 1] - s[..., 0])[ok], (a[..., 1] - a[..., 0])[ok], atol=1e-4)
    # item lags: lag -1 of the first study item and +1 of the last are outside the list (NaN), not BOS or the test list
    first = lists.test_item == 0
    assert np.isnan(cap.scores[..., 7][first.numpy()[:, None, None, :].repeat(2, 1).repeat(4, 2)]).all()


def test_streamed_path_matches_exact_with_sliding_window():
    gemma = tiny_gemma3(seed=2, window=4)
    lists = random_token_lists(gemma, n_items=6, batch=2, seed=0, order="permuted")
    exact = capture_lists(gemma, lists, method="exact")
    streamed = capture_lists(gemma, lists, method="streamed")
    for name in ("scores", "attn", "study_attn", "recall_prob"):
        a, b = getattr(exact, name), getattr(streamed, name)
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
        np.testing.assert_allclose(a, b, atol=1e-5, equal_nan=True)
    # window 4 on local layers: study items more than 3 tokens back are invisible there (attention 0, score NaN)
    local = [l for l, t in enumerate(gemma.layer_types) if t == "sliding"]
    assert (exact.study_attn[:, local] == 0).mean() > 0.5 and np.isnan(exact.scores[:, local]).mean() > 0.5


class _KeyGrab(AttentionHook):
    def __init__(self, layer):
        self.layers = frozenset([layer])

    def on_qk(self, call, query, key):
        self.key = key.detach().clone()


class _PerfectInduction(AttentionHook):
    """Sets one head's queries to strength/scaling * pinv(K) e_target: score = strength at the induction target, 0 elsewhere."""

    def __init__(self, layer, head, keys, targets, strength=6.0):
        self.layers, self.head, self.keys, self.targets, self.strength = frozenset([layer]), head, keys, targets, strength

    def edit_query(self, call, query):
        k = self.keys[:, self.head // call.group].double()  # (B, N, D), N <= D: full column rank
        e = torch.nn.functional.one_hot(self.targets.clamp(min=0), k.shape[1]).double()  # (B, N, N)
        q = torch.linalg.pinv(k) @ e.transpose(1, 2) * (self.strength / call.scaling)  # (B, D, N)
        q = torch.where((self.targets >= 0)[:, None, :], q, 0.0).transpose(1, 2)
        query = query.clone()
        query[:, self.head] = q.to(query.dtype)
        return query


def test_hand_set_induction_head_is_cmr_like_and_uniform_head_is_not(llama):
    lists = random_token_lists(llama, n_items=10, batch=4, seed=5)  # BOS + 10 x 2 = 21 tokens <= d_head 32
    targets = torch.full(lists.input_ids.shape, -1)
    targets.scatter_(1, lists.test_pos, lists.first_pos + 1)  # induction target: the token after the first occurrence
    targets[:, lists.test_pos[0, -1]] = -1  # the last item's successor is the test list, not a study item
    grab = _KeyGrab(1)
    with hooks_active(grab):
        llama.logits(lists.input_ids)
    induction = _PerfectInduction(1, 2, grab.key, targets)
    uniform = InterventionHook(llama, [ZeroQuery([(1, 0)])])
    cap = capture_lists(llama, lists, extra_hooks=[induction, uniform])
    curve = cap.lag_curve("scores", n_boot=200)
    lags = list(curve.lags)
    head = curve.mean[1, 2]
    assert lags[int(np.argmax(head))] == 1
    np.testing.assert_allclose(head[lags.index(1)], 6.0, atol=1e-3)
    np.testing.assert_allclose(np.delete(head, lags.index(1)), 0.0, atol=1e-3)
    assert curve.lags[int(np.argmax(cap.lag_curve("attn", n_boot=0).mean[1, 2]))] == 1
    fit = fit_cmr(curve.mean, curve.lags)
    assert fit.distance[1, 2] < 0.01 and fit.cmr_like()[1, 2]
    assert fit.beta_enc[1, 2] >= 0.9  # all the mass one step ahead: fast encoding drift
    np.testing.assert_allclose(curve.mean[1, 0], 0.0, atol=1e-6)  # zeroed query: every score 0, attention uniform
    assert not fit.cmr_like()[1, 0] and np.isinf(fit.distance[1, 0])
    lags_crp, crp = cap.crp(max_lag=3)
    np.testing.assert_allclose(crp[1, 2], np.where(lags_crp == 1, crp[1, 2].max(), crp[1, 2]), atol=0)
    assert crp[1, 2][lags_crp == 1] > 0.9


def test_recorder_needs_a_full_pass_and_lists_are_checked(llama):
    lists = random_token_lists(llama, n_items=4, batch=1, seed=0)
    rec = PairScoreRecorder([0], lists.test_pos, {"lag": item_keys(lists, LAGS)[0]})
    with pytest.raises(InputError, match="full forward"), hooks_active(rec):
        llama.model.generate(input_ids=lists.input_ids, max_new_tokens=2, do_sample=False, pad_token_id=0)
    with pytest.raises(InputError, match="RecallLists"):
        capture_lists(llama, lists.input_ids)
    gapped = RecallLists(lists.input_ids, lists.study_pos * 2 - 1, lists.test_pos, lists.test_item, "x", 0)
    with pytest.raises(InputError, match="consecutive"):
        capture_lists(llama, gapped, method="streamed")
    with pytest.raises(InputError, match="method"):
        capture_lists(llama, lists, method="fast")


def test_frequent_lists_fall_back_to_merge_rank_on_a_toy_vocabulary(llama):
    lists = frequent_token_lists(llama, n_items=6, batch=3, seed=0)
    assert lists.info["frequency_proxy"].startswith("lowest token ids")
    study = lists.study_ids
    assert sorted(study[0].tolist()) == sorted(study[1].tolist())  # the same words, in a different random order
    ids = lists.input_ids
    assert torch.equal(ids.gather(1, lists.test_pos), ids.gather(1, lists.first_pos))

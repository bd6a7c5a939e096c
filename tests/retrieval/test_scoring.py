"""Wu et al.'s retrieval score on hand-built attention, answer checking, and head selection for masking."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from workbench.errors import InputError
from workbench.retrieval.causal import random_heads, top_heads
from workbench.retrieval.scoring import copy_paste_events, mean_over_correct, retrieval_score, rouge1_recall


def _attention():
    """(T=4 steps, L=1, H=3, N=6 keys) attention of the decoded queries, built by hand."""
    a = torch.full((4, 1, 3, 6), 0.02)
    top = [[2, 3, 4, 0],  # head 0 copies each answer token from its source: 3 events
           [2, 2, 4, 5],  # head 1: steps 0 and 2 (step 1 looks at token 7, not 8; step 3 outside the span)
           [0, 1, 5, 3]]  # head 2: step 0 attends key 0, which holds 8 (= the token at step 1, not step 0)
    for h, keys in enumerate(top):
        for t, k in enumerate(keys):
            a[t, 0, h, k] = 0.9
    return a


def test_retrieval_score_hand_computed():
    prompt = torch.tensor([8, 6, 7, 8, 9, 10])  # answer span [2, 5): tokens 7 8 9; token 8 also at position 0
    generated = torch.tensor([7, 8, 9, 3])
    top_keys = _attention().argmax(-1)
    events = copy_paste_events(top_keys, generated, prompt, (2, 5))
    assert events[:, 0, 0].tolist() == [True, True, True, False]
    assert events[:, 0, 1].tolist() == [True, False, True, False]
    assert not events[:, 0, 2].any()
    np.testing.assert_allclose(retrieval_score(top_keys, generated, prompt, (2, 5)), [[1.0, 2 / 3, 0.0]])
    # a copy from outside the span never counts: head 2 attends the 8 at position 0 while 8 is generated
    top_keys[1, 0, 2] = 0
    assert retrieval_score(top_keys, generated, prompt, (2, 5))[0, 2] == 0.0


def test_retrieval_score_errors():
    with pytest.raises(InputError, match="answer span"):
        retrieval_score(torch.zeros(2, 1, 1, dtype=torch.long), torch.zeros(2), torch.zeros(5), (4, 9))
    with pytest.raises(InputError, match="one generated token per step"):
        retrieval_score(torch.zeros(2, 1, 1, dtype=torch.long), torch.zeros(3), torch.zeros(5), (1, 2))


def test_rouge_and_mean_over_correct():
    assert rouge1_recall("saffron tornado", "The password is Saffron tornado.") == 1.0
    assert rouge1_recall("saffron tornado", "saffron") == 0.5
    assert rouge1_recall("4627359", "46273") == 0.0
    scores = np.stack([np.full((2, 2), v) for v in (0.2, 0.4, 0.9)])
    np.testing.assert_allclose(mean_over_correct(scores, [True, True, False]), np.full((2, 2), 0.3))
    with pytest.raises(InputError, match="no test was answered correctly"):
        mean_over_correct(scores, [False] * 3)


def test_top_and_random_heads():
    s = np.array([[0.0, 0.5, 0.05], [0.3, np.nan, 0.2]])
    assert top_heads(s, 3) == [(0, 1), (1, 0), (1, 2)]
    draws = random_heads(s, 2, 0.1, exclude=[(0, 1)], n_draws=4, seed=0)
    assert len(draws) == 4
    for d in draws:  # only sub-threshold heads: (0,0), (0,2) and the NaN head (1,1)
        assert len(set(d)) == 2 and set(d) <= {(0, 0), (0, 2), (1, 1)}
    assert draws == random_heads(s, 2, 0.1, exclude=[(0, 1)], n_draws=4, seed=0)
    with pytest.raises(InputError, match="cannot draw"):
        random_heads(s, 4, 0.1, exclude=[], n_draws=1, seed=0)
    with pytest.raises(InputError, match="k must lie"):
        top_heads(s, 0)

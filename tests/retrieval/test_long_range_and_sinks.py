"""Long-range mass (streamed) against exact float64 patterns; hidden sinks (ACT) on hand-built and captured attention."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import tiny_gemma3, tiny_llama
from workbench.errors import InputError
from workbench.patterns import capture
from workbench.retrieval.long_range import (classify_long_range, layout_agreement, long_range_mass,
                                            uniform_long_range)
from workbench.retrieval.sinks import hidden_sink_report, hidden_sinks, key_importance_all
from workbench.scores import key_importance


def _ids(batch=2, n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, 96, (batch, n), generator=g)
    ids[:, 0] = 1
    return ids


def _reference(subject, ids, window, n_sink, extra=()):
    """The definition, query by query, on exact float64 patterns."""
    cap = capture(subject, ids)
    n = ids.shape[1]
    sinks = set(range(n_sink)) | set(extra)
    out = np.zeros((subject.n_layers, subject.n_heads))
    for layer in range(subject.n_layers):
        a = cap.patterns[layer].double().numpy()  # (B, H, N, N)
        shares = []
        for i in range(window + n_sink, n):
            keys = [j for j in range(i + 1) if j not in sinks]
            far = [j for j in keys if i - j >= window]
            shares.append(a[:, :, i, far].sum(-1) / a[:, :, i, keys].sum(-1))
        out[layer] = np.mean(shares, 0).mean(0)
    return out


@pytest.mark.parametrize("make, extra", [(tiny_llama, ()), (tiny_llama, (10, 30)), (tiny_gemma3, (20,))])
def test_long_range_matches_exact_reference(make, extra):
    subject = make()
    ids = _ids()
    got = long_range_mass(subject, ids, window=8, n_sink=4, sink_positions=extra)
    np.testing.assert_allclose(got, _reference(subject, ids, 8, 4, extra), atol=1e-5)


def test_gemma_sliding_layers_are_local():
    subject = tiny_gemma3(window=4)
    share = long_range_mass(subject, _ids(), window=8)
    assert np.all(share[:2] == 0)  # sliding layers see 4 keys: nothing lies 8 tokens back
    assert np.all(share[2] > 0.3)  # the random global layer spreads its attention
    table = layout_agreement(share, subject.layer_types, threshold=0.1)
    assert table.loc["sliding", "local"] == 6 and table.loc["full", "long-range"] == 3
    assert (classify_long_range(share) == np.array([["local"] * 3] * 2 + [["long-range"] * 3])).all()


def test_uniform_reference_and_errors():
    # a head attending uniformly over non-sink keys: the reference level equals the measured share
    n, w = 40, 8
    assert uniform_long_range(n, w, 4) == pytest.approx(np.mean([(i - w + 1 - 4) / (i + 1 - 4) for i in range(12, 40)]))
    subject = tiny_llama()
    with pytest.raises(InputError, match="window"):
        long_range_mass(subject, _ids(n=10), window=8)
    with pytest.raises(InputError, match="positive number"):
        long_range_mass(subject, _ids(), window=0)


def test_hidden_sinks_hand_built():
    alpha = torch.tensor([[0.9, 0.02, 0.3, 0.05, 0.2, 0.5, 0.6],   # first sink 0; hidden: 2, 4 (5, 6 seen by < 3)
                          [0.01, 0.4, 0.02, 0.02, 0.02, 0.0, 0.0],  # first sink is key 1: nothing hidden
                          [0.0] * 7])
    mask = hidden_sinks(alpha, threshold=0.1, min_queries=3)
    assert mask[0].nonzero().ravel().tolist() == [2, 4]
    assert not mask[1:].any()


def test_key_importance_and_report_match_capture():
    subject = tiny_llama(seed=2)
    ids = _ids(batch=3, n=24, seed=5)
    alpha = key_importance_all(subject, ids)  # (L, H, B, N)
    cap = capture(subject, ids)
    for layer in range(subject.n_layers):
        ref = key_importance(cap.patterns[layer].double()).transpose(0, 1)
        torch.testing.assert_close(alpha[layer].double(), ref, atol=1e-6, rtol=1e-5)
    report = hidden_sink_report(subject, ids, threshold=0.1, min_queries=4)
    mask = hidden_sinks(alpha, 0.1, 4)
    np.testing.assert_allclose(report.rate, mask.any(-1).float().mean(-1).numpy())
    assert len(report.sinks) == int(mask.sum())
    if len(report.sinks):
        row = report.sinks.iloc[0]
        assert row["alpha"] == pytest.approx(float(alpha[row["layer"], row["head"], row["sample"], row["position"]]))
        assert row["position"] > 0
    with pytest.raises(InputError, match="too short"):
        hidden_sink_report(subject, ids[:, :4])

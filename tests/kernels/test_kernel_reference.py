"""The chunked PyTorch reference against a dense float64 oracle written with explicit loops (tiny sizes)."""

from __future__ import annotations

import math
import random

import pytest
import torch

from workbench.errors import InputError
from workbench.kernels import AttentionStatsRequest, attention_stats, log_lag_edges
from workbench.kernels import reference as reference_module
from workbench.kernels.reference import reference_attention_stats


def dense_oracle(q, k, req, scale, window=None, key_mask=None, softcap=None):
    """Full attention matrix with a Python-loop mask, then each statistic by its definition."""
    b, hq, nq, d = q.shape
    nk = k.shape[2]
    s = torch.einsum("bhid,bhjd->bhij", q, k.repeat_interleave(hq // k.shape[1], dim=1)) * scale
    if softcap:
        s = softcap * torch.tanh(s / softcap)
    vis = torch.zeros(b, nq, nk, dtype=torch.bool)
    for bi in range(b):
        for i in range(nq):
            pos = i + nk - nq
            for j in range(nk):
                vis[bi, i, j] = (j <= pos and (window is None or j > pos - window)
                                 and (key_mask is None or bool(key_mask[bi, j])))
    s = s.masked_fill(~vis[:, None], -math.inf)
    a = torch.softmax(s, dim=-1)  # NaN rows where nothing is visible
    blind = ~vis.any(-1)[:, None].expand(b, hq, nq)  # rows that see no key: NaN statistics
    out = {"lse": torch.logsumexp(s, -1), "entropy": -(a * torch.log(a)).nan_to_num(0.0).sum(-1)}
    out["entropy"][blind] = math.nan
    out["first_k_mass"] = a[..., :req.first_k].sum(-1)
    edges = req.lag_bins.tolist()
    lag_mass = torch.zeros(b, hq, nq, len(edges) - 1, dtype=q.dtype)
    for i in range(nq):
        for j in range(nk):
            lag = i + nk - nq - j
            for e in range(len(edges) - 1):
                if edges[e] <= lag < edges[e + 1]:
                    lag_mass[:, :, i, e] += a[:, :, i, j]
    lag_mass[blind] = math.nan
    out["lag_mass"] = lag_mass
    tp = torch.full((b, hq, nq, len(req.target_lags)), math.nan, dtype=q.dtype)
    tl = tp.clone()
    for bi in range(b):
        for i in range(nq):
            for li, lag in enumerate(req.target_lags):
                j = int(req.targets[bi, i]) + lag
                if req.targets[bi, i] >= 0 and 0 <= j < nk and vis[bi, i, j]:
                    tp[bi, :, i, li], tl[bi, :, i, li] = a[bi, :, i, j], s[bi, :, i, j]
    out["target_prob"], out["target_logit"] = tp, tl
    return out


def rel(a, r, name=""):
    fin = torch.isfinite(r)
    assert torch.equal(torch.isnan(a), torch.isnan(r)), f"{name}: NaN pattern differs"
    return ((a[fin] - r[fin]).norm() / r[fin].norm()).item()


@pytest.mark.parametrize("kw", [{}, {"window": 3}, {"key_mask": True}, {"softcap": 1.5}])
def test_reference_matches_dense_oracle(kw, monkeypatch):
    seed = random.SystemRandom().randrange(2**31)
    g = torch.Generator().manual_seed(seed)
    b, hq, hkv, nq, nk, d = 2, 4, 2, 9, 13, 8
    q = torch.randn(b, hq, nq, d, generator=g, dtype=torch.float64)
    k = torch.randn(b, hkv, nk, d, generator=g, dtype=torch.float64)
    if kw.get("key_mask"):
        kw = {"key_mask": torch.rand(b, nk, generator=g) > 0.3}
        kw["key_mask"][0, :6] = False  # query 0 of batch 0 sees nothing
    req = AttentionStatsRequest(entropy=True, first_k=3, lag_bins=torch.tensor([0, 1, 2, 5, 9, 100]),
                                targets=torch.randint(-1, nk, (b, nq), generator=g), target_lags=(-1, 0, 1))
    monkeypatch.setattr(reference_module, "CHUNK_ELEMENTS", b * hq * nk * 2)  # several query chunks
    got = reference_attention_stats(q, k, req, scale=0.3, **kw)
    want = dense_oracle(q, k, req, 0.3, **kw)
    for name, r in want.items():
        assert rel(got[name], r, name) < 1e-12, f"{name} seed={seed}"


def test_topk_rows_spans_and_mean():
    g = torch.Generator().manual_seed(random.SystemRandom().randrange(2**31))
    q, k = torch.randn(1, 2, 6, 4, generator=g), torch.randn(1, 1, 6, 4, generator=g)
    req = AttentionStatsRequest(topk=3, rows=torch.tensor([5, 0]), spans=torch.tensor([[[0, 2], [4, 6]]]),
                                first_k=1, reduce="mean")
    out = attention_stats(q, k, req)
    a = torch.softmax((q @ k.transpose(-1, -2) * 0.5).masked_fill(torch.ones(6, 6).triu(1).bool(), -math.inf), -1)
    torch.testing.assert_close(out["rows"], a[:, :, [5, 0]])
    srt = torch.sort(a, dim=-1, descending=True, stable=True)
    assert torch.equal(out["topk_index"][0, :, 3:], srt.indices[0, :, 3:, :3])
    assert (out["topk_index"][0, :, 0, 1:] == -1).all() and out["topk_index"].shape == (1, 2, 6, 3)
    torch.testing.assert_close(out["span_mass"], torch.stack([a[..., 0:2].sum(-1), a[..., 4:6].sum(-1)], -1).mean(2))
    torch.testing.assert_close(out["first_k_mass"], a[..., 0].mean(-1))
    assert out["lse"].shape == (1, 2, 6) and out["lse"].dtype == torch.float32


def test_log_lag_edges_and_default_request():
    assert log_lag_edges(5).tolist() == [0, 1, 2, 4, 8]
    assert log_lag_edges(2**17)[-1] == 2**17
    req = AttentionStatsRequest.default()
    assert req.entropy and req.first_k == 4 and req.topk == 1 and req.targets is None


@pytest.mark.parametrize("bad,match", [
    (dict(lag_bins=torch.tensor([0, 4, 2])), "strictly increasing"),
    (dict(first_k=0), "positive int"),
    (dict(reduce="sum"), "reduce must be one of"),
    (dict(targets=torch.zeros(3, dtype=torch.long)), r"shape \(B, Nq\)"),
    (dict(spans=torch.tensor([[[3, 1]]])), "start <= end"),
    (dict(lag_bins=torch.tensor([0.0, 1.0])), "integer"),
])
def test_bad_request(bad, match):
    with pytest.raises(InputError, match=match):
        AttentionStatsRequest(**bad)


def test_bad_inputs():
    q, k = torch.randn(1, 4, 5, 8), torch.randn(1, 2, 5, 8)
    req = AttentionStatsRequest(entropy=True)
    with pytest.raises(InputError, match="Nq <= Nk"):
        attention_stats(q, k[:, :, :3], req)
    with pytest.raises(InputError, match="window"):
        attention_stats(q, k, req, window=0)
    with pytest.raises(InputError, match="key_mask"):
        attention_stats(q, k, req, key_mask=torch.ones(1, 5))
    with pytest.raises(InputError, match="targets"):
        attention_stats(q, k, AttentionStatsRequest(targets=torch.zeros(1, 4, dtype=torch.long)))
    with pytest.raises(InputError, match="backend"):
        attention_stats(q, k, req, backend="cuda")
    with pytest.raises(InputError, match="4-D"):
        attention_stats(q[0], k, req)

"""The fast CPU path (float32 key tiles, online log-sum-exp) against the float64 reference, on the same random-input
matrix as the Triton kernel (tests/kernels/cases.py), with tiles small enough that every case spans many."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import given, settings, strategies as st

from tests.kernels import cases
from tests.kernels.cases import MATRIX, compare, full_request, seed
from workbench.kernels import AttentionStatsRequest, attention_stats, log_lag_edges
from workbench.kernels.cpu_stats import cpu_attention_stats, default_block_q
from workbench.kernels.reference import reference_attention_stats

TOL = 1e-4  # float32 arithmetic against float64 (measured: ~3e-7)
TILES = [dict(block_q=16, block_k=16), dict(block_q=8, block_k=32), {}]  # {}: the default tiles


@pytest.fixture(params=[1, 2], ids=["1-thread", "2-threads"])
def threads(request):
    """Run with one thread, and with two (query blocks on a pool of worker threads)."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


def check(seed, b, hq, hkv, nq, nk, d, dtype=torch.float32, request=None, tiles=None, **kw):
    """Fast CPU path vs float64 reference on the same (rounded) inputs."""
    q, k = cases.inputs(seed, b, hq, hkv, nq, nk, d, dtype)
    req = request or full_request(seed, b, nq, nk)
    ref = reference_attention_stats(q.double(), k.double(), req, scale=d ** -0.5, **kw)
    out = cpu_attention_stats(q, k, req, scale=d ** -0.5, **(tiles or {}), **kw)
    assert all(t.dtype == (torch.int64 if n == "topk_index" else torch.float32) for n, t in out.items())
    compare(out, ref, TOL, f"seed={seed} shape={(b, hq, hkv, nq, nk, d)} {dtype} {kw} {tiles}")
    assert torch.equal(out["topk_index"], ref["topk_index"]) if req.topk else True


@pytest.mark.parametrize("tiles", TILES, ids=["16x16", "8x32", "default"])
@pytest.mark.parametrize("b,hq,hkv,nq,nk,d,kw", MATRIX)
def test_matches_reference(b, hq, hkv, nq, nk, d, kw, tiles, threads):
    s = seed()
    check(s, b, hq, hkv, nq, nk, d, tiles=tiles, **cases.options(kw, s, b, nk))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs(dtype):
    """Half inputs are upcast: float32 accuracy on the rounded inputs."""
    check(seed(), 1, 3, 1, 97, 97, 64, dtype, tiles=dict(block_q=16, block_k=32), window=60)


def test_each_statistic_alone():
    """Each statistic requested alone (its own code path: no entropy buffer, no lag sums, ...), and top-16."""
    s = seed()
    q, k = cases.inputs(s, 2, 4, 2, 90, 90, 16)
    full = dataclasses.replace(full_request(s, 2, 90, 90), topk=16)
    for field in ("entropy", "first_k", "spans", "lag_bins", "targets", "topk"):
        one = AttentionStatsRequest(**{field: getattr(full, field)},
                                    **({"target_lags": full.target_lags} if field == "targets" else {}))
        out = cpu_attention_stats(q, k, one, scale=0.25, window=40, block_q=16, block_k=16)
        ref = reference_attention_stats(q.double(), k.double(), one, scale=0.25, window=40)
        assert set(out) == set(ref), field
        compare(out, ref, TOL, f"{field} alone, seed={s}")
        if field == "topk":
            assert torch.equal(out["topk_index"], ref["topk_index"]), f"top-16 seed={s}"


@pytest.mark.parametrize("topk", [1, 5])
def test_topk_exact_ties_lowest_index_first(topk):
    """Small-integer inputs make every score exact, so ties are exact in both implementations."""
    s = seed()
    g = torch.Generator().manual_seed(s)
    q = torch.randint(-2, 3, (1, 2, 40, 16), generator=g).float()
    k = torch.randint(-2, 3, (1, 1, 40, 16), generator=g).float()
    k[:, :, 9] = k[:, :, 3]
    k[:, :, 30] = k[:, :, 3]
    req = AttentionStatsRequest(topk=topk)
    out = cpu_attention_stats(q, k, req, scale=0.25, block_q=8, block_k=8)
    ref = reference_attention_stats(q.double(), k.double(), req, scale=0.25)
    assert torch.equal(out["topk_index"], ref["topk_index"]), f"seed={s}"


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 2), st.integers(1, 2), st.sampled_from([1, 3, 4]), st.integers(1, 70), st.integers(0, 20),
       st.sampled_from([8, 40]), st.one_of(st.none(), st.integers(1, 90)), st.booleans(),
       st.one_of(st.none(), st.floats(0.5, 5.0)), st.sampled_from([4, 16, 64]), st.sampled_from([4, 16, 64]),
       st.integers(0, 2**31 - 1))
def test_property_shapes(b, hkv, ratio, nq, extra, d, window, masked, softcap, block_q, block_k, s):
    nk = nq + extra
    kw = {"window": window, "softcap": softcap}
    if masked:
        kw["key_mask"] = torch.rand(b, nk, generator=torch.Generator().manual_seed(s)) > 0.2
    check(s, b, hkv * ratio, hkv, nq, nk, d, tiles=dict(block_q=block_q, block_k=block_k), **kw)


def test_auto_backend_runs_it_on_cpu_and_reduces():
    s = seed()
    q, k = cases.inputs(s, 2, 3, 1, 50, 50, 16)
    mask = torch.ones(2, 50, dtype=torch.bool)
    mask[1, :7] = False
    req = AttentionStatsRequest(entropy=True, lag_bins=log_lag_edges(64), targets=torch.randint(-1, 50, (2, 50)),
                                topk=1, rows=torch.tensor([0, 49, 7]), reduce="mean")
    auto = attention_stats(q, k, req, key_mask=mask)
    cpu = attention_stats(q, k, req, key_mask=mask, backend="cpu")
    ref = attention_stats(q.double(), k.double(), req, key_mask=mask)  # float64: the reference
    for name in ref:
        assert torch.equal(auto[name], cpu[name]), name
        if name != "topk_index":
            a, r = cpu[name].double(), ref[name].double()
            fin = r.isfinite()
            assert torch.equal(a.isnan(), r.isnan()) and cases.rel_err(a[fin], r[fin]) < TOL, f"{name} seed={s}"
    assert cpu["rows"].shape == (2, 3, 3, 50) and cpu["entropy"].shape == (2, 3)


def test_default_tiles_bound_memory():
    """A tile holds about TILE_ELEMENTS scores whatever N: memory O(B x Hq x block_q x block_k), not N x N."""
    assert default_block_q(9) * 1024 * 9 <= 2**21 and default_block_q(4) == 256 and default_block_q(900) == 16

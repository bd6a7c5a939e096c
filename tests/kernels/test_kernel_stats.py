"""The Triton attention-statistics kernel against the PyTorch reference (float64).

Without a GPU the kernel runs in Triton's CPU interpreter (TRITON_INTERPRET=1, set in conftest.py before the
kernels are imported); with one, the same tests run the compiled kernel on CUDA tensors. Inputs are fresh random draws
each run (the seed is in every failure message); outputs are poisoned before launch and checked to be written.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

GPU = torch.cuda.is_available()  # without one, tests/kernels/conftest.py has set TRITON_INTERPRET=1
pytest.importorskip("triton")
from hypothesis import given, settings, strategies as st  # noqa: E402

from workbench.errors import InputError  # noqa: E402
from workbench.kernels import AttentionStatsRequest, attention_stats, log_lag_edges  # noqa: E402
from workbench.kernels.api import resolve_backend  # noqa: E402
from workbench.kernels.reference import reference_attention_stats  # noqa: E402
from workbench.kernels.triton_stats import triton_attention_stats  # noqa: E402
from tests.kernels import cases  # noqa: E402
from tests.kernels.cases import MATRIX, POISON, compare, full_request, rel_err, seed  # noqa: E402

DEV = "cuda" if GPU else "cpu"
pytestmark = pytest.mark.filterwarnings("ignore:.*encountered in:RuntimeWarning")  # interpreter: log2(0) of empty rows
TOL = {torch.float32: 1e-3, torch.bfloat16: 1e-2, torch.float16: 1e-2}
TF32_TOL = 1e-2  # float32 inputs through tf32 tensor cores (10-bit mantissa), the GPU default
SMALL = {"config": dict(block_r=32, block_n=16, num_warps=4, num_stages=1)}  # many tiles at small N, GPU too


def inputs(seed, b, hq, hkv, nq, nk, d, dtype=torch.float32):
    return cases.inputs(seed, b, hq, hkv, nq, nk, d, dtype, DEV)


def check(seed, b, hq, hkv, nq, nk, d, dtype=torch.float32, request=None, options=None, tol=None, **kw):
    """Kernel (with launch options) vs float64 reference on the same rounded inputs."""
    q, k = inputs(seed, b, hq, hkv, nq, nk, d, dtype)
    req = request or full_request(seed, b, nq, nk)
    wider = dataclasses.replace(req, topk=req.topk + 1) if req.topk else req
    ref = reference_attention_stats(q.double(), k.double(), wider, scale=d ** -0.5, **kw)
    out = triton_attention_stats(q, k, req, scale=d ** -0.5, poison=POISON, **(options or {}), **kw)
    compare(out, ref, tol or TOL[dtype], f"seed={seed} shape={(b, hq, hkv, nq, nk, d)} {dtype} {kw} {options}")


@pytest.mark.parametrize("b,hq,hkv,nq,nk,d,kw", MATRIX)
def test_matches_reference(b, hq, hkv, nq, nk, d, kw):
    s = seed()
    check(s, b, hq, hkv, nq, nk, d, options=SMALL, **cases.options(kw, s, b, nk, DEV))


@pytest.mark.parametrize("precision,tol", [("ieee", TOL[torch.float32]), ("tf32", TF32_TOL)])
def test_float32_precision(precision, tol):
    """tf32 (the float32 default on a GPU) within bf16-like tolerance, "ieee" within float32 tolerance."""
    check(seed(), 1, 3, 1, 70, 70, 32, options={**SMALL, "precision": precision}, tol=tol, window=30)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision(dtype):
    check(seed(), 1, 3, 1, 97, 97, 64, dtype, options=SMALL, window=60)


@pytest.mark.parametrize("option", [{"passes": 2}, {"group_heads": False}])
def test_two_pass_and_per_head_programs(option):
    check(seed(), 1, 6, 2, 61, 61, 32, options={**SMALL, **option}, window=40)


@pytest.mark.parametrize("topk", [1, 5])
def test_topk_exact_ties_lowest_index_first(topk):
    """Small-integer inputs make every score exact, so ties are exact in both implementations."""
    s = seed()
    g = torch.Generator().manual_seed(s)
    q = torch.randint(-2, 3, (1, 2, 40, 16), generator=g).float().to(DEV)
    k = torch.randint(-2, 3, (1, 1, 40, 16), generator=g).float().to(DEV)
    k[:, :, 9] = k[:, :, 3]
    k[:, :, 30] = k[:, :, 3]
    req = AttentionStatsRequest(topk=topk)
    out = triton_attention_stats(q, k, req, scale=0.25, poison=POISON, **SMALL)
    ref = reference_attention_stats(q.double(), k.double(), req, scale=0.25)
    assert torch.equal(out["topk_index"].cpu(), ref["topk_index"].cpu()), f"seed={s}"
    if topk == 5:  # query 2 sees 3 keys: the other slots are empty
        assert (out["topk_index"][0, :, 2, 3:] == -1).all() and (out["topk_prob"][0, :, 2, 3:] == 0).all()


@settings(max_examples=6, deadline=None)
@given(st.integers(1, 2), st.integers(1, 2), st.sampled_from([1, 3, 4]), st.integers(1, 48), st.integers(0, 16),
       st.sampled_from([16, 40]), st.one_of(st.none(), st.integers(1, 80)), st.booleans(),
       st.sampled_from([torch.float32, torch.bfloat16]), st.integers(0, 2**31 - 1))
def test_property_shapes(b, hkv, ratio, nq, extra, d, window, masked, dtype, s):
    nk = nq + extra
    kw = {"window": window}
    if masked:
        kw["key_mask"] = (torch.rand(b, nk, generator=torch.Generator().manual_seed(s)) > 0.2).to(DEV)
    check(s, b, hkv * ratio, hkv, nq, nk, d, dtype, options=SMALL, **kw)


def test_public_api_reduce_and_rows():
    s = seed()
    q, k = inputs(s, 2, 3, 1, 50, 50, 16)
    mask = torch.ones(2, 50, dtype=torch.bool, device=DEV)
    mask[1, :7] = False
    req = AttentionStatsRequest(entropy=True, lag_bins=log_lag_edges(64), targets=torch.randint(-1, 50, (2, 50)),
                                topk=1, rows=torch.tensor([0, 49, 7]), reduce="mean")
    out = attention_stats(q, k, req, key_mask=mask, backend="triton")
    ref = attention_stats(q, k, req, key_mask=mask, backend="reference")
    assert out["entropy"].shape == (2, 3) and out["lag_mass"].shape == (2, 3, 7) and out["rows"].shape == (2, 3, 3, 50)
    assert out["target_prob"].shape == (2, 3, 1) and out["topk_index"].shape == (2, 3, 50, 1)
    assert torch.equal(out["lse"].isinf(), ref["lse"].isinf()) and out["lse"][1, :, :7].isinf().all()
    for name in ref:
        if name != "topk_index":
            a, r = out[name].double().cpu(), ref[name].double().cpu()
            fin = r.isfinite()
            assert rel_err(a[fin], r[fin]) < 1e-3, f"{name} seed={s}"


def test_auto_backend_on_cpu_is_the_tile_path():
    """The interpreter is for tests: "auto" never picks it; on the CPU it is the float32 tile path ("cpu"), for
    float64 inputs the reference; on a GPU (test_gpu_auto_backend) "auto" is Triton."""
    q = torch.zeros(1, 1, 1, 16)
    assert resolve_backend("auto", q) == "cpu" and resolve_backend("auto", q.bfloat16()) == "cpu"
    assert resolve_backend("auto", q.double()) == "reference" and resolve_backend("triton", q) == "triton"


def test_bad_input_is_named():
    q, k = inputs(0, 1, 3, 2, 8, 8, 16)
    with pytest.raises(InputError, match="multiple of key/value heads"):
        attention_stats(q, k, AttentionStatsRequest(entropy=True))
    q, k = inputs(0, 1, 4, 2, 8, 8, 16)
    with pytest.raises(InputError, match="float16, bfloat16 or float32"):
        attention_stats(q.double(), k.double(), AttentionStatsRequest(entropy=True), backend="triton")
    with pytest.raises(InputError, match="at most top-16"):
        attention_stats(q, k, AttentionStatsRequest(topk=17), backend="triton")
    with pytest.raises(InputError, match="precision must be one of"):
        attention_stats(q, k, AttentionStatsRequest(entropy=True), precision="fp32")


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype,precision", [(torch.float32, "tf32"), (torch.float32, "ieee"), (torch.bfloat16, None)])
@pytest.mark.parametrize("heads,n,kw", [
    ((9, 3, 64), 4099, {}),                                        # SmolLM2-135M
    ((9, 3, 64), 3000, {"window": 512}),
    ((9, 3, 64), 1, {}),
    ((4, 1, 256), 2500, {"window": 512}),                          # Gemma-3-270M local and global layers
    ((4, 1, 256), 2049, {"key_mask": "random"}),
])
def test_gpu_model_shapes(dtype, precision, heads, n, kw):
    """Real models' attention shapes with the tuned tiles, every statistic, at a few thousand tokens."""
    s = seed()
    opts = {"precision": precision} if precision else {}
    tol = TF32_TOL if precision == "tf32" else None
    hq, hkv, d = heads
    if kw.get("key_mask") == "random":
        kw = {"key_mask": (torch.rand(1, n, generator=torch.Generator().manual_seed(s)) > 0.1).to(DEV)}
    g = torch.Generator().manual_seed(s)
    s0 = torch.randint(0, n, (1, 3, 1), generator=g)
    req = dataclasses.replace(AttentionStatsRequest.default(targets=torch.randint(-1, n, (1, n), generator=g),
                                                            max_lag=n),
                              spans=torch.cat([s0, s0 + 1 + n // 10], -1), target_lags=(-2, 0, 3), topk=4)
    check(s, 1, hq, hkv, n, n, d, dtype, request=req, options=opts, tol=tol, **kw)
    check(s, 1, hq, hkv, 1, n, d, dtype, request=AttentionStatsRequest(entropy=True, topk=4), options=opts, tol=tol,
          **kw)  # decoding


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("heads", [(9, 3, 64), (4, 1, 256)])
def test_gpu_heaviest_request(dtype, heads):
    """Top-16, 63 lag bins and 64 spans at once (the smaller tiles chosen for large per-row state)."""
    s = seed()
    hq, hkv, d = heads
    n = 1500
    g = torch.Generator().manual_seed(s)
    s0 = torch.randint(0, n, (1, 64, 1), generator=g)
    req = AttentionStatsRequest(entropy=True, first_k=4, spans=torch.cat([s0, s0 + 1 + n // 50], -1),
                                lag_bins=torch.arange(64) * (n // 60), targets=torch.randint(-1, n, (1, n), generator=g),
                                target_lags=(-1, 0, 2), topk=16)
    check(s, 1, hq, hkv, n, n, d, dtype, request=req, tol=TF32_TOL if dtype == torch.float32 else None, window=700)


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="needs a CUDA GPU")
def test_gpu_auto_backend():
    q, k = inputs(0, 1, 4, 2, 300, 300, 64, torch.bfloat16)
    assert resolve_backend("auto", q) == "triton" and resolve_backend("auto", q.double()) == "reference"
    req = AttentionStatsRequest.default(max_lag=300, reduce="mean")
    out, ref = attention_stats(q, k, req), attention_stats(q, k, req, backend="reference")
    for name in ("entropy", "first_k_mass", "lag_mass"):
        assert rel_err(out[name].double().cpu(), ref[name].double().cpu()) < 1e-2, name

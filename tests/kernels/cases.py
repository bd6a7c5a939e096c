"""The random-input matrix and the comparison shared by the kernel tests (Triton and the fast CPU path) against the
float64 reference. Inputs are fresh random draws each run; the seed is in every failure message."""

from __future__ import annotations

import random

import torch

from workbench.kernels import AttentionStatsRequest, log_lag_edges

POISON = 7777.0

# (B, Hq, Hkv, Nq, Nk, D, options): odd sizes, GQA 1/3/4, windows, decoding, padding, soft-capping
MATRIX = [
    (1, 3, 3, 1, 1, 16, {}),                                   # N = 1
    (1, 4, 1, 17, 17, 16, {}),                                 # GQA 4
    (2, 3, 1, 75, 75, 32, {}),                                 # GQA 3, odd N, batch
    (1, 3, 1, 151, 151, 24, {"window": 37}),                   # window, D not a power of two
    (1, 4, 2, 1, 200, 16, {"window": 50}),                     # decoding step
    (2, 3, 1, 33, 80, 16, {"key_mask": "random"}),             # Nq < Nk with padding
    (1, 2, 1, 60, 60, 16, {"softcap": 2.0}),                   # Gemma-2 soft-capping
]


def seed() -> int:
    return random.SystemRandom().randrange(2**31)


def inputs(seed, b, hq, hkv, nq, nk, d, dtype=torch.float32, device="cpu"):
    """Random q (B,Hq,Nq,D), k (B,Hkv,Nk,D) with a few large scores, so rows are neither flat nor one-hot."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, hq, nq, d, generator=g) * 1.5
    k = torch.randn(b, hkv, nk, d, generator=g)
    return q.to(device, dtype), k.to(device, dtype)


def options(kw: dict, seed: int, b: int, nk: int, device="cpu") -> dict:
    """The matrix's options with key_mask="random" drawn: ~30% padding, and the first 5 keys masked, so the first
    queries see no key at all (NaN statistics)."""
    if kw.get("key_mask") != "random":
        return kw
    mask = torch.rand(b, nk, generator=torch.Generator().manual_seed(seed)) > 0.3
    mask[:, :5] = False
    return {**kw, "key_mask": mask.to(device)}


def full_request(seed, b, nq, nk, topk=3, lags=(-1, 0, 2)):
    """Every statistic at once, with random targets (some -1) and spans (some empty)."""
    g = torch.Generator().manual_seed(seed + 1)
    targets = torch.randint(-1, nk, (b, nq), generator=g)
    s0 = torch.randint(0, nk, (b, 2, 1), generator=g)
    spans = torch.cat([s0, s0 + torch.randint(0, 9, (b, 2, 1), generator=g)], dim=-1)
    return AttentionStatsRequest(entropy=True, first_k=min(4, nk), spans=spans, lag_bins=log_lag_edges(max(nk, 2)),
                                 targets=targets, target_lags=lags, topk=topk)


def rel_err(a, r):
    return ((a - r).norm() / r.norm().clamp_min(1e-30)).item()


def compare(out, ref, tol, msg):
    """Every statistic within relative error tol; NaN exactly where the reference has NaN; top-k indices equal
    where the reference's neighbouring probabilities are clearly apart; nothing left poisoned."""
    assert set(out) >= set(ref) - {"topk_index", "topk_prob"}, f"missing {set(ref) - set(out)}; {msg}"
    for name, r in ref.items():
        if name == "topk_index":
            continue
        a = out[name].double().cpu()
        r = r.double().cpu()[..., :a.shape[-1]]  # the reference may have one more top-k slot
        assert a.shape == r.shape, f"{name}: shape {tuple(a.shape)} != {tuple(r.shape)}; {msg}"
        assert not (a == POISON).any(), f"{name}: unwritten elements; {msg}"
        assert torch.equal(torch.isnan(a), torch.isnan(r)), f"{name}: NaN pattern differs; {msg}"
        fin = torch.isfinite(r)
        assert torch.equal(torch.isfinite(a), fin), f"{name}: inf pattern differs; {msg}"
        if fin.any():
            assert rel_err(a[fin], r[fin]) < tol, f"{name}: rel err {rel_err(a[fin], r[fin]):.2e}; {msg}"
    if "topk_index" in ref:
        k = out["topk_index"].shape[-1]
        idx, ridx = out["topk_index"].cpu(), ref["topk_index"][..., :k].cpu()
        assert not (idx == -7).any(), f"topk_index unwritten; {msg}"
        p = ref["topk_prob"].double().cpu()
        if p.shape[-1] == k:  # no extra slot: the last one is compared without a gap
            p = torch.nn.functional.pad(p, (0, 1), value=-1.0)
        gap = 10 * tol * p[..., :1].clamp_min(1e-12)
        apart = (p[..., :k] - p[..., 1:k + 1] > gap)
        apart[..., 1:] &= (p[..., :k - 1] - p[..., 1:k] > gap[..., :1].expand_as(p[..., 1:k]))
        assert torch.equal(idx[apart], ridx[apart]), f"topk_index differs; {msg}"

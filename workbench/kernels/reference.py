"""Pure-PyTorch attention statistics: the oracle for the Triton kernels and the CPU path.

Queries are processed in chunks, so memory stays O(B x Hq x chunk x Nk) rather than N x N; each statistic is
computed directly from the chunk's masked softmax. Per-query outputs; `reduce` is applied by the caller.
"""

from __future__ import annotations

import math

import torch

from workbench.kernels.request import AttentionStatsRequest

CHUNK_ELEMENTS = 2**24  # scores held at once (B x Hq x chunk x Nk)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Float64 stays float64; everything else is computed in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def masked_scores(q: torch.Tensor, k: torch.Tensor, qpos: torch.Tensor, *, scale: float, window: int | None,
                  key_mask: torch.Tensor | None, softcap: float | None) -> torch.Tensor:
    """Scaled (soft-capped) scores q.k (B,Hq,C,Nk) with -inf where key j is not visible to query position qpos."""
    b, hq, c, d = q.shape
    hkv, nk = k.shape[1], k.shape[2]
    s = torch.matmul(q.reshape(b, hkv, (hq // hkv) * c, d), k.transpose(-1, -2)).reshape(b, hq, c, nk) * scale
    if softcap is not None:
        s = softcap * torch.tanh(s / softcap)
    j = torch.arange(nk, device=q.device)
    visible = j[None, :] <= qpos[:, None]
    if window is not None:
        visible = visible & (j[None, :] > qpos[:, None] - window)
    visible = visible[None, None]
    if key_mask is not None:
        visible = visible & key_mask[:, None, None, :]
    return s.masked_fill(~visible, -math.inf)


def reference_attention_stats(q: torch.Tensor, k: torch.Tensor, request: AttentionStatsRequest, *, scale: float,
                              window: int | None = None, key_mask: torch.Tensor | None = None,
                              softcap: float | None = None) -> dict[str, torch.Tensor]:
    """Per-query attention statistics from explicit softmax rows, chunked over queries (see AttentionStatsRequest)."""
    b, hq, nq, _ = q.shape
    nk = k.shape[2]
    dt = compute_dtype(q.dtype)
    kc = k.to(dt)
    offset = nk - nq
    chunk = max(1, CHUNK_ELEMENTS // max(1, b * hq * nk))
    parts: dict[str, list[torch.Tensor]] = {}

    def add(name, value):
        parts.setdefault(name, []).append(value)

    for c0 in range(0, nq, chunk):
        c1 = min(nq, c0 + chunk)
        qpos = torch.arange(c0, c1, device=q.device) + offset
        s = masked_scores(q[:, :, c0:c1].to(dt), kc, qpos, scale=scale, window=window, key_mask=key_mask,
                          softcap=softcap)
        lse = torch.logsumexp(s, dim=-1)
        p = torch.exp(s - lse[..., None])  # NaN rows where no key is visible
        add("lse", lse)
        if request.entropy:
            add("entropy", -torch.xlogy(p, p).sum(-1))
        if request.first_k is not None:
            add("first_k_mass", p[..., :request.first_k].sum(-1))
        if request.spans is not None:
            mass = torch.stack([
                torch.stack([p[i, :, :, int(s0):int(s1)].sum(-1) for s0, s1 in request.spans[i].tolist()], dim=-1)
                for i in range(b)])
            add("span_mass", torch.where(torch.isfinite(lse)[..., None], mass, math.nan))  # empty spans too
        if request.lag_bins is not None:
            lag = qpos[:, None] - torch.arange(nk, device=q.device)[None, :]
            edges = request.lag_bins.tolist()
            add("lag_mass", torch.stack([(p * ((lag >= lo) & (lag < hi))).sum(-1)
                                         for lo, hi in zip(edges[:-1], edges[1:])], dim=-1))
        if request.targets is not None:
            tgt = request.targets[:, c0:c1].to(q.device)
            logits, probs = [], []
            for lag in request.target_lags:
                key = tgt + lag
                ok = (tgt >= 0) & (key >= 0) & (key < nk)
                idx = key.clamp(0, nk - 1)[:, None, :, None].expand(b, hq, c1 - c0, 1)
                sv, pv = s.gather(-1, idx)[..., 0], p.gather(-1, idx)[..., 0]
                ok = ok[:, None, :] & torch.isfinite(sv) & torch.isfinite(lse)
                logits.append(torch.where(ok, sv, math.nan))
                probs.append(torch.where(ok, pv, math.nan))
            add("target_logit", torch.stack(logits, dim=-1))
            add("target_prob", torch.stack(probs, dim=-1))
        if request.topk is not None:
            kk = min(request.topk, nk)
            sv, si = torch.sort(s, dim=-1, descending=True, stable=True)  # stable: ties keep lowest index first
            sv, si = sv[..., :kk], si[..., :kk]
            seen = torch.isfinite(sv)
            idx = torch.where(seen, si, -1)
            prob = torch.where(seen, torch.exp(sv - lse[..., None]), 0.0)
            pad = request.topk - kk
            add("topk_index", torch.nn.functional.pad(idx, (0, pad), value=-1))
            add("topk_prob", torch.nn.functional.pad(prob, (0, pad), value=0.0))
    out = {name: torch.cat(v, dim=2) for name, v in parts.items()}
    if request.rows is not None:
        out["rows"] = attention_rows(q, k, request.rows, scale=scale, window=window, key_mask=key_mask,
                                     softcap=softcap)
    return out


def attention_rows(q: torch.Tensor, k: torch.Tensor, rows: torch.Tensor, *, scale: float, window: int | None = None,
                   key_mask: torch.Tensor | None = None, softcap: float | None = None) -> torch.Tensor:
    """Exact attention rows softmax(S[i, :]) for query indices `rows` (B,Hq,R,Nk), zeros where not visible."""
    b, hq, nq, _ = q.shape
    nk = k.shape[2]
    dt = compute_dtype(q.dtype)
    rows = rows.to(q.device)
    chunk = max(1, CHUNK_ELEMENTS // max(1, b * hq * nk))
    kc = k.to(dt)
    out = []
    for c0 in range(0, len(rows), chunk):
        sel = rows[c0:c0 + chunk]
        s = masked_scores(q[:, :, sel].to(dt), kc, sel + (nk - nq), scale=scale, window=window, key_mask=key_mask,
                          softcap=softcap)
        out.append(torch.softmax(s, dim=-1).nan_to_num(0.0))
    return torch.cat(out, dim=2)

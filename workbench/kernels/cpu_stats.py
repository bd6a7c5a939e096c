"""The fast CPU path: the kernels' streaming tile algorithm in PyTorch, float32, multithreaded by torch's intra-op pool.

Queries are taken in blocks of ``block_q`` rows (all query heads of a key/value group packed, as in the Triton
kernel) and each block walks the key tiles of ``block_k`` keys that causality and the window leave visible:
one blocked matmul per tile, the online log-sum-exp (running max m, sums rescaled by exp(m_old - m_new); Milakov &
Gimelshein 2018, FlashAttention, Dao et al. 2022), and next to it the statistics that need every key of a row
(entropy, the lag histogram as cumulative mass G(e) = mass at lag >= e, top-k). The statistics that need a few
keys per row (targets, first-k mass, spans) are computed afterwards from the row log-sum-exp, by recomputing only
those scores. Memory: O(B x Hq x block_q x block_k) per tile plus O(B x Hq x Nq x statistics) outputs.

Same definitions and outputs as ``reference_attention_stats`` (see AttentionStatsRequest); tested against it
in float64 with float32 tolerances (tests/kernels/test_cpu_stats.py).
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import torch

from workbench.kernels.request import AttentionStatsRequest

FILL = -1.0e38  # invisible key's score: finite, so p = exp(FILL - m) = 0 and p * (FILL - m) = 0, never NaN
M_INIT = -1.0e30  # running max before any visible key (above FILL: rows that see nothing keep l = 0)
BLOCK_K = 1024  # keys per tile
TILE_ELEMENTS = 2**21  # scores per tile (B x Hq x block_q x BLOCK_K): 8 MB, about a core's share of a large L3


def cpu_attention_stats(q: torch.Tensor, k: torch.Tensor, request: AttentionStatsRequest, *, scale: float,
                        window: int | None = None, key_mask: torch.Tensor | None = None,
                        softcap: float | None = None, block_q: int | None = None,
                        block_k: int = BLOCK_K) -> dict[str, torch.Tensor]:
    """Per-query attention statistics (see AttentionStatsRequest) by key tiles in float32; inputs checked by
    `attention_stats`. Equals `reference_attention_stats` up to float32 rounding."""
    b, hq, nq, d = q.shape
    block_q = block_q or default_block_q(b * hq, block_k)
    hkv, nk = k.shape[1], k.shape[2]
    g = hq // hkv
    off = nk - nq
    dev = q.device
    qf = (q.float() * scale).reshape(b, hkv, g, nq, d)  # (B, Hkv, G, Nq, D): query head h = kv head * G + g
    kf = k.float().contiguous()
    km = None if key_mask is None else key_mask.to(dev)
    edges = [int(e) for e in request.lag_bins.tolist()] if request.lag_bins is not None else []
    g_edges = [e for e in edges if 0 < e <= nk - 1]  # cumulative mass G(e) needed; G(0) = 1, G(e > max lag) = 0
    topk = request.topk or 0
    new = lambda *shape, dtype=torch.float32: torch.empty(b, hkv, g, nq, *shape, dtype=dtype, device=dev)  # noqa
    lse = new()
    ent = new() if request.entropy else None
    cum = new(len(g_edges)) if g_edges else None
    top_v, top_i = (new(topk), new(topk, dtype=torch.long)) if topk else (None, None)

    def run_block(i0: int) -> None:
        i1 = min(nq, i0 + block_q)
        cq = i1 - i0
        p_lo, p_hi = i0 + off, i1 - 1 + off  # first and last query position of the block
        qb = qf[:, :, :, i0:i1].reshape(b, hkv, g * cq, d)  # one matmul per key/value head for its G query heads
        qpos = torch.arange(p_lo, p_hi + 1, device=dev)
        m = torch.full((b, hkv, g, cq), M_INIT, device=dev)
        l = torch.zeros(b, hkv, g, cq, device=dev)
        a = torch.zeros(b, hkv, g, cq, device=dev) if ent is not None else None
        gc = torch.zeros(b, hkv, g, cq, len(g_edges), device=dev) if g_edges else None
        tv = torch.full((b, hkv, g, cq, max(topk, 1)), FILL, device=dev) if topk else None
        ti = torch.full((b, hkv, g, cq, max(topk, 1)), -1, dtype=torch.long, device=dev) if topk else None
        tiles = key_tiles(p_lo, p_hi, nk, window, block_k)
        for j0, j1 in tiles:
            s = torch.matmul(qb, kf[:, :, j0:j1].transpose(-1, -2)).view(b, hkv, g, cq, j1 - j0)
            if softcap is not None:
                s = s.div_(softcap).tanh_().mul_(softcap)
            hidden = hidden_keys(qpos, p_lo, p_hi, j0, j1, window, km)
            if hidden is not None:
                s.add_(torch.where(hidden, FILL, 0.0))  # a broadcast add: far faster than masked_fill_ here
            m_t = s.amax(-1)
            if topk == 1:  # the tile of each row's first maximum; its index is found after the block
                better = m_t > tv[..., 0]  # strict: on ties the earlier tile stays
                tv[..., 0] = torch.where(better, m_t, tv[..., 0])
                ti[..., 0] = torch.where(better, j0, ti[..., 0])
            elif topk:
                tv, ti = merge_topk(tv, ti, s, j0, topk)
            m_new = torch.maximum(m, m_t)
            alpha = torch.exp(m - m_new)
            s.sub_(m_new[..., None])  # s - m_new <= 0
            p = torch.exp(s) if a is not None else s.exp_()
            rows = p.sum(-1)
            if a is not None:  # a = sum p (m - s), rescaled like l: entropy = log l + a / l
                a = alpha * (a + (m_new - m) * l) - torch.linalg.vecdot(p, s)
            if gc is not None:
                gc.mul_(alpha[..., None])
                add_cumulative(gc, p, rows, g_edges, qpos, p_lo, p_hi, j0, j1)
            l = l * alpha + rows
            m = m_new
        seen = l > 0
        lse[..., i0:i1] = torch.where(seen, m + torch.log(l), -math.inf)
        if ent is not None:
            ent[..., i0:i1] = torch.where(seen, torch.log(l) + a / l, math.nan)
        if gc is not None:
            cum[..., i0:i1, :] = gc / l[..., None]  # NaN where no key is visible
        if topk == 1:
            ti[..., 0] = first_max_index(qb.view(b, hkv, g, cq, d), kf, ti[..., 0], tiles, qpos, p_lo, p_hi, window,
                                         km, softcap)
        if topk:
            top_v[..., i0:i1, :], top_i[..., i0:i1, :] = tv, ti

    in_parallel(run_block, range(0, nq, block_q))

    def heads(t: torch.Tensor) -> torch.Tensor:  # (B, Hkv, G, Nq, ...) -> (B, Hq, Nq, ...)
        return t.reshape(b, hq, nq, *t.shape[4:])

    out = {"lse": heads(lse)}
    if ent is not None:
        out["entropy"] = heads(ent)
    if request.lag_bins is not None:
        out["lag_mass"] = lag_mass_from_cumulative(None if cum is None else heads(cum), edges, g_edges, out["lse"])
    if topk:
        out["topk_index"] = heads(top_i)
        out["topk_prob"] = torch.where(out["topk_index"] >= 0, torch.exp(heads(top_v) - out["lse"][..., None]), 0.0)
    if request.first_k is not None:
        first = torch.tensor([[0, min(request.first_k, nk)]] * b)
        out["first_k_mass"] = heads(span_mass(qf, kf, lse, first, off, window, km, softcap))
    if request.spans is not None:
        out["span_mass"] = heads(torch.stack([span_mass(qf, kf, lse, request.spans[:, si], off, window, km, softcap)
                                              for si in range(request.spans.shape[1])], dim=-1))
    if request.targets is not None:
        logit, prob = target_stats(qf, kf, lse, request.targets.to(dev), request.target_lags, off, window, km,
                                   softcap)
        out["target_logit"], out["target_prob"] = heads(logit), heads(prob)
    return out


def default_block_q(rows: int, block_k: int = BLOCK_K) -> int:
    """Query positions per block: a power of two in 16..256 that keeps a tile near TILE_ELEMENTS scores."""
    return 1 << max(4, min(8, (TILE_ELEMENTS // max(1, rows * block_k)).bit_length() - 1))


def in_parallel(fn, items) -> None:
    """fn(item) for each item on torch.get_num_threads() worker threads, each running torch ops single-threaded
    (the tile ops are too small for torch's own intra-op threads, which on a busy machine made them up to 8x
    slower); items go largest-first: the last query blocks see the most keys."""
    items = list(items)[::-1]
    threads = torch.get_num_threads()
    if threads <= 1 or len(items) <= 1:
        for item in items:
            fn(item)
        return
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(threads) as pool:
            for _ in pool.map(fn, items):
                pass
    finally:
        torch.set_num_threads(threads)


def key_tiles(p_lo: int, p_hi: int, nk: int, window: int | None, block_k: int):
    """[j0, j1) key tiles that some query position in p_lo..p_hi can see (causal, sliding window)."""
    lo = max(0, p_lo - window + 1) if window is not None else 0
    hi = min(p_hi + 1, nk)
    return [(j0, min(j0 + block_k, hi)) for j0 in range(lo, hi, block_k)]


def hidden_keys(qpos: torch.Tensor, p_lo: int, p_hi: int, j0: int, j1: int, window: int | None,
                km: torch.Tensor | None) -> torch.Tensor | None:
    """Bool mask (B|1, 1, 1, Cq, Ck) of keys j0..j1-1 hidden from query positions qpos, or None if all are visible."""
    causal = j1 - 1 > p_lo
    old = window is not None and j0 <= p_hi - window
    kmask = km is not None and not bool(km[:, j0:j1].all())
    if not (causal or old or kmask):
        return None
    j = torch.arange(j0, j1, device=qpos.device)
    hidden = torch.zeros(qpos.numel(), j1 - j0, dtype=torch.bool, device=qpos.device)
    if causal:
        hidden |= j[None, :] > qpos[:, None]
    if old:
        hidden |= j[None, :] <= qpos[:, None] - window
    hidden = hidden[None, None, None]
    if kmask:
        hidden = hidden | ~km[:, None, None, None, j0:j1]
    return hidden


def add_cumulative(gc, p, rows, g_edges, qpos, p_lo, p_hi, j0, j1):
    """Add each row's mass at lag >= e (keys j <= qpos - e) among keys j0..j1-1 to gc[..., index of e].

    Row r counts columns c <= cut = qpos[r] - e - j0: every column below the first row's cut, none from past
    the last row's, and a staircase in the band between (at most Cq columns wide). One cumulative sum over the
    union of the bands of all edges that cut this tile gives every edge's staircase by a gather."""
    ck = j1 - j0
    cut_edges = []
    for ei, e in enumerate(g_edges):
        lo = min(max(p_lo - e - j0 + 1, 0), ck)  # columns < lo count for every row
        hi = min(max(p_hi - e - j0 + 1, 0), ck)  # columns >= hi count for no row
        if lo == ck:
            gc[..., ei] += rows
        elif hi > 0:
            cut_edges.append((ei, e, lo, hi))
    if not cut_edges:
        return
    band_lo, band_hi = min(c[2] for c in cut_edges), max(c[3] for c in cut_edges)
    below = p[..., :band_lo].sum(-1) if band_lo > 0 else torch.zeros_like(rows)
    cs = p[..., band_lo:band_hi].cumsum(-1) if band_hi > band_lo else None  # empty: one query row, cut at band_lo
    for ei, e, lo, hi in cut_edges:
        gc[..., ei] += below
        if cs is not None:
            last = qpos - e - j0 - band_lo  # index into the band of each row's last counted column (-1: none there)
            part = cs.gather(-1, last.clamp(0, band_hi - band_lo - 1).expand(*cs.shape[:-1])[..., None])[..., 0]
            gc[..., ei] += torch.where(last >= 0, part, 0.0)


def lag_mass_from_cumulative(cum, edges, g_edges, lse):
    """Bin masses G(e_b) - G(e_b+1) from normalised cumulative masses G(e) (G(0) = 1, G(e > max lag) = 0)."""
    nan_rows = torch.isinf(lse)
    one = torch.where(nan_rows, math.nan, 1.0)
    zero = torch.where(nan_rows, math.nan, 0.0)

    def G(e):
        if e <= 0:
            return one
        if e in g_edges:
            return cum[..., g_edges.index(e)]
        return zero

    return torch.stack([G(lo) - G(hi) for lo, hi in zip(edges[:-1], edges[1:])], dim=-1)


def first_max_index(qb, kf, tile, tiles, qpos, p_lo, p_hi, window, km, softcap) -> torch.Tensor:
    """Key index of each row's first maximal score, given the start of the tile that holds it (-1: none): the scores
    of that one tile are recomputed for the rows that chose it (argmax over every tile would cost a pass)."""
    b, hkv, g, cq, d = qb.shape
    index = torch.full_like(tile, -1)
    for j0, j1 in tiles:
        chosen = tile == j0
        if not bool(chosen.any()):
            continue
        for bi in range(b):
            for h in range(hkv):
                gi, qi = chosen[bi, h].nonzero(as_tuple=True)
                if gi.numel() == 0:
                    continue
                s = torch.matmul(qb[bi, h, gi, qi], kf[bi, h, j0:j1].T)  # (rows, Ck)
                if softcap is not None:
                    s = s.div_(softcap).tanh_().mul_(softcap)
                hidden = hidden_keys(qpos, p_lo, p_hi, j0, j1, window, None if km is None else km[bi:bi + 1])
                if hidden is not None:
                    s.add_(torch.where(hidden[0, 0, 0][qi], FILL, 0.0))
                index[bi, h, gi, qi] = s.argmax(-1) + j0  # argmax: the first maximal index
    return index


def merge_topk(tv, ti, s, j0, topk):
    """Best `topk` (score, index) of the running set and this tile's scores s: scores descending, ties by lowest index."""
    kk = min(topk, s.shape[-1])
    sv, si = torch.topk(s, kk, dim=-1)
    vk = sv[..., -1:]
    tied = ((vk > FILL) & ((s >= vk).sum(-1, keepdim=True) > kk))[..., 0]  # which tied keys topk kept is arbitrary
    if bool(tied.any()):
        sv[tied], si[tied] = (x[:, :kk] for x in torch.sort(s[tied], dim=-1, descending=True, stable=True))
    cv = torch.cat([tv, sv], dim=-1)
    ci = torch.cat([ti, si + j0], dim=-1)
    by_index = torch.argsort(torch.where(ci < 0, torch.iinfo(ci.dtype).max, ci), dim=-1, stable=True)
    cv, ci = cv.gather(-1, by_index), ci.gather(-1, by_index)
    by_score = torch.argsort(cv, dim=-1, descending=True, stable=True)[..., :topk]
    cv, ci = cv.gather(-1, by_score), ci.gather(-1, by_score)
    return cv, torch.where(cv > FILL, ci, -1)


def span_mass(qf, kf, lse, spans, off, window, km, softcap, block_k: int = BLOCK_K) -> torch.Tensor:
    """(B, Hkv, G, Nq) attention mass on keys [start, end) (spans (B, 2), one per batch item) from the row lse."""
    b, hkv, g, nq, d = qf.shape
    nk = kf.shape[2]
    block_q = default_block_q(hkv * g, block_k)
    out = torch.zeros(b, hkv, g, nq, device=qf.device)
    for bi in range(b):
        s0, s1 = int(spans[bi, 0]), min(int(spans[bi, 1]), nk)
        for i0 in range(max(0, s0 - off), nq, block_q):  # queries at positions >= s0 can see the span
            i1 = min(nq, i0 + block_q)
            p_lo, p_hi = i0 + off, i1 - 1 + off
            qpos = torch.arange(p_lo, p_hi + 1, device=qf.device)
            qb = qf[bi, :, :, i0:i1].reshape(hkv, g * (i1 - i0), d)
            for j0, j1 in key_tiles(p_lo, p_hi, nk, window, block_k):
                j0, j1 = max(j0, s0), min(j1, s1)
                if j0 >= j1:
                    continue
                s = torch.matmul(qb, kf[bi, :, j0:j1].transpose(-1, -2)).view(hkv, g, i1 - i0, j1 - j0)
                if softcap is not None:
                    s = s.div_(softcap).tanh_().mul_(softcap)
                s = s - lse[bi, :, :, i0:i1, None]
                hidden = hidden_keys(qpos, p_lo, p_hi, j0, j1, window, None if km is None else km[bi:bi + 1])
                if hidden is not None:
                    s.masked_fill_(hidden[0], -math.inf)
                out[bi, :, :, i0:i1] += torch.exp(s).sum(-1)
    return torch.where(torch.isinf(lse), math.nan, out)


def target_stats(qf, kf, lse, targets, lags, off, window, km, softcap):
    """target_logit and target_prob (B, Hkv, G, Nq, L) of keys targets + lag: NaN if none or not visible."""
    b, hkv, g, nq, d = qf.shape
    nk = kf.shape[2]
    qpos = torch.arange(nq, device=qf.device) + off
    logits, probs = [], []
    for lag in lags:
        key = targets + lag  # (B, Nq)
        ok = (targets >= 0) & (key >= 0) & (key <= qpos) & (key < nk)
        if window is not None:
            ok &= key > qpos - window
        kc = key.clamp(0, nk - 1)
        if km is not None:
            ok &= km.gather(1, kc)
        kt = kf.gather(2, kc[:, None, :, None].expand(b, hkv, nq, d))  # (B, Hkv, Nq, D)
        s = torch.einsum("bhgnd,bhnd->bhgn", qf, kt)
        if softcap is not None:
            s = softcap * torch.tanh(s / softcap)
        ok = ok[:, None, None, :] & torch.isfinite(lse)
        logits.append(torch.where(ok, s, math.nan))
        probs.append(torch.where(ok, torch.exp(s - lse), math.nan))
    return torch.stack(logits, dim=-1), torch.stack(probs, dim=-1)

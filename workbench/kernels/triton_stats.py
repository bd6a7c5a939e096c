"""Triton kernel for attention-row statistics that streams key tiles and never stores an N x N matrix.

One program takes BLOCK_R rows = (query, head) pairs of one key/value group (grouped-query heads packed, so each
key tile is loaded once for all query heads that share it) and walks the key tiles that causality and the window
leave visible. Scores are kept in log2 units. In the default one-pass mode every statistic is accumulated
online next to the softmax normaliser (a running max m and sums rescaled by 2^(m_old - m_new), as in
FlashAttention); with passes=2 a first launch computes the row log-sum-exp and a second recomputes the scores
with p = 2^(s - lse) fixed (the textbook two-pass form, kept for comparison in the benchmark).

Lag histograms use cumulative mass: G(e) = mass of keys with lag >= e is read off when a tile contains the key
at lag e, and bin b = G(edge_b) - G(edge_b+1); so only the few tiles holding an edge pay for the histogram.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from workbench.kernels.request import AttentionStatsRequest

_LOG2E = tl.constexpr(1.4426950408889634)
_LN2 = tl.constexpr(0.6931471805599453)
_FILL = tl.constexpr(-1.0e38)  # invisible key's score: exp2 gives exactly 0 and 0 * (m - FILL) stays finite
_M_INIT = tl.constexpr(-1.0e30)  # running max before any visible key
_BIG = tl.constexpr(2**30)
_INF = tl.constexpr(float("inf"))

MAX_TOPK = 16  # in-register top-k; larger k: use request.rows or the reference backend
MAX_BINS = 64  # lag bins / spans held in registers per row


@triton.jit
def _or_nan(keep, x):
    """x where keep, else NaN (no NaN global: Triton 3.6 rejects a global that compares unequal to itself)."""
    return tl.where(keep, x, _INF - _INF)


@triton.jit
def _log2_score(raw, scale, softcap, HAS_SOFTCAP: tl.constexpr):
    """Scaled score in log2 units: raw*scale*log2(e), or softcap*tanh(raw*scale/softcap)*log2(e)."""
    if HAS_SOFTCAP:
        e2x = tl.exp2(raw * (2.0 * _LOG2E * scale / softcap))
        return (softcap * _LOG2E) * (1.0 - 2.0 / (e2x + 1.0))
    else:
        return raw * (scale * _LOG2E)


@triton.jit
def _stats_kernel(
    Q, K, KMASK, EDGES, SPANS, LSE_IN,
    O_LSE, O_ENT, O_FK, O_SPAN, O_LAG, O_TI, O_TV,
    sqb, sqh, sqn, sqd, skb, skh, skn, skd,
    Hq, Nq, Nk, n_groups, G, q_offset, window, first_k, n_edges, n_spans,
    scale, softcap,
    D: tl.constexpr, D_PAD: tl.constexpr, GP: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_WINDOW: tl.constexpr, HAS_KMASK: tl.constexpr, HAS_SOFTCAP: tl.constexpr, LSE_GIVEN: tl.constexpr,
    DO_ENT: tl.constexpr, DO_FK: tl.constexpr, DO_SPANS: tl.constexpr, S_PAD: tl.constexpr,
    DO_LAG: tl.constexpr, E_PAD: tl.constexpr, TOPK: tl.constexpr, K_PAD: tl.constexpr,
    PRECISION: tl.constexpr, DOT_F32: tl.constexpr,
):
    pid_r = tl.num_programs(0) - 1 - tl.program_id(0)  # the longest query blocks start first
    pid_g = tl.program_id(1)
    b = (pid_g // n_groups).to(tl.int64)
    h0 = (pid_g % n_groups) * GP
    kvh = (h0 // G).to(tl.int64)
    rr = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rr < Nq * GP
    qi = rr // GP
    h = h0 + rr % GP
    qpos = qi + q_offset
    out_row = (b * Hq + h) * Nq + qi
    dd = tl.arange(0, D_PAD)
    d_ok = dd < D
    q = tl.load(Q + b * sqb + h[:, None].to(tl.int64) * sqh + qi[:, None].to(tl.int64) * sqn + dd[None, :] * sqd,
                mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    if DOT_F32:  # the interpreter's tl.dot is wrong on bfloat16 (Triton 3.9)
        q = q.to(tl.float32)
    k_base = K + b * skb + kvh * skh

    r_first = pid_r * BLOCK_R
    q_lo = r_first // GP + q_offset
    q_hi = tl.minimum((r_first + BLOCK_R - 1) // GP, Nq - 1) + q_offset
    if HAS_WINDOW:
        lo = (tl.maximum(q_lo - window + 1, 0) // BLOCK_N) * BLOCK_N
    else:
        lo = 0

    if LSE_GIVEN:
        m_i = tl.maximum(tl.load(LSE_IN + out_row, mask=row_ok, other=0.0) * _LOG2E, _M_INIT)
    else:
        m_i = tl.full([BLOCK_R], _M_INIT, tl.float32)
    l_i = tl.zeros([BLOCK_R], tl.float32)
    a_i = tl.zeros([BLOCK_R], tl.float32)  # sum p * (m - s): entropy = log2(l) + a / l (bits)
    fk_i = tl.zeros([BLOCK_R], tl.float32)
    ecol = tl.arange(0, E_PAD)
    lag_acc = tl.zeros([BLOCK_R, E_PAD], tl.float32)  # column i: +G(edge_i) - G(edge_i+1), relative to m_lag
    m_lag = tl.full([BLOCK_R], _M_INIT, tl.float32)
    if DO_LAG:  # edges i_lo <= i < i_hi have their key (qpos - edge) in the current tile for some row; tiles move
        # right, so both bounds only fall: scalars e_lo = edge[i_lo - 1], e_hi = edge[i_hi - 1] track them
        i_lo = n_edges
        i_hi = n_edges
        e_lo = tl.load(EDGES + n_edges - 1)
        e_hi = e_lo
    scol = tl.arange(0, S_PAD)
    span_acc = tl.zeros([BLOCK_R, S_PAD], tl.float32)
    m_span = tl.full([BLOCK_R], _M_INIT, tl.float32)
    kcol = tl.arange(0, K_PAD)
    if TOPK > 1:  # an unsorted set of the best TOPK (score, index); padding slots +inf so never evicted
        top_v = tl.where(kcol[None, :] < TOPK, tl.full([BLOCK_R, K_PAD], _FILL, tl.float32), _INF)
        top_i = tl.full([BLOCK_R, K_PAD], -1, tl.int32)
    else:
        top_v = tl.full([BLOCK_R], _FILL, tl.float32)
        top_i = tl.full([BLOCK_R], -1, tl.int32)

    for start in range(lo, q_hi + 1, BLOCK_N):
        kk = start + tl.arange(0, BLOCK_N)
        kt = tl.load(k_base + kk[:, None].to(tl.int64) * skn + dd[None, :] * skd,
                     mask=(kk[:, None] < Nk) & d_ok[None, :], other=0.0)
        if DOT_F32:
            kt = kt.to(tl.float32)
        s = _log2_score(tl.dot(q, tl.trans(kt), input_precision=PRECISION), scale, softcap, HAS_SOFTCAP)
        if HAS_KMASK:
            km = tl.load(KMASK + b * Nk + kk, mask=kk < Nk, other=0)
            vis = (kk[None, :] <= qpos[:, None]) & (km[None, :] != 0)
            if HAS_WINDOW:
                vis = vis & (kk[None, :] > qpos[:, None] - window)
            s = tl.where(vis, s, _FILL)
        else:
            masked_tile = start + BLOCK_N - 1 > q_lo  # the diagonal (keys past Nk lie beyond it too)
            if HAS_WINDOW:
                masked_tile = masked_tile | (start < q_hi - window + 1)
            if masked_tile:
                vis = kk[None, :] <= qpos[:, None]
                if HAS_WINDOW:
                    vis = vis & (kk[None, :] > qpos[:, None] - window)
                s = tl.where(vis, s, _FILL)

        if TOPK == 1:  # one reduction gives the tile's row max and its lowest arg-max
            m_t, t_i = tl.max(s, 1, return_indices=True, return_indices_tie_break_left=True)
        else:
            m_t = tl.max(s, 1)
        if LSE_GIVEN:
            m_new = m_i
        else:
            m_new = tl.maximum(m_i, m_t)
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        if DO_ENT:
            a_i = alpha * (a_i + (m_new - m_i) * l_i) + tl.sum(p * (m_new[:, None] - s), 1)
        if DO_FK:
            fk_i = fk_i * alpha
            if start < first_k:
                fk_i += tl.sum(tl.where(kk[None, :] < first_k, p, 0.0), 1)
        if DO_SPANS:
            for si in range(n_spans):
                s0 = tl.load(SPANS + (b * n_spans + si) * 2)
                s1 = tl.load(SPANS + (b * n_spans + si) * 2 + 1)
                if (s0 < start + BLOCK_N) & (s1 > start):
                    span_acc = span_acc * tl.exp2(m_span - m_new)[:, None]
                    m_span = m_new
                    part = tl.sum(tl.where((kk[None, :] >= s0) & (kk[None, :] < s1), p, 0.0), 1)
                    span_acc += tl.where(scol[None, :] == si, part[:, None], 0.0)
        if DO_LAG:
            while e_hi > q_hi - start:  # every row's key at lag e_hi lies left of this tile
                i_hi -= 1
                e_hi = tl.load(EDGES + i_hi - 1, mask=i_hi > 0, other=-_BIG)
            while e_lo >= q_lo - (start + BLOCK_N - 1):  # some row's key at lag e_lo is in or left of this tile
                i_lo -= 1
                e_lo = tl.load(EDGES + i_lo - 1, mask=i_lo > 0, other=-_BIG)
            if i_hi > i_lo:
                lag_acc = lag_acc * tl.exp2(m_lag - m_new)[:, None]
                m_lag = m_new
                before = alpha * l_i
                for i in range(i_lo, i_hi):
                    pe = qpos - tl.load(EDGES + i)
                    g = before + tl.sum(tl.where(kk[None, :] <= pe[:, None], p, 0.0), 1)
                    g = tl.where((pe >= start) & (pe < start + BLOCK_N), g, 0.0)[:, None]
                    lag_acc += tl.where(ecol[None, :] == i, g, 0.0) - tl.where(ecol[None, :] == i - 1, g, 0.0)
        if TOPK == 1:
            better = m_t > top_v  # strict: on ties the earlier (lower) index stays
            top_v = tl.where(better, m_t, top_v)
            top_i = tl.where(better, start + t_i, top_i)
        elif TOPK > 1:
            work = s
            for _ in range(TOPK):  # a loop, not unrolled: TOPK copies of this body made ptxas take minutes
                mt = tl.max(work, 1)
                kth = tl.min(top_v, 1)
                go = mt > kth
                if tl.max(go.to(tl.int32), 0) > 0:
                    t_i = tl.min(tl.where(work == mt[:, None], kk[None, :], _BIG), 1)
                    worst = tl.where(top_v == kth[:, None], top_i, -2)  # evict the highest index among the minima
                    slot = tl.min(tl.where(worst == tl.max(worst, 1)[:, None], kcol[None, :], K_PAD), 1)
                    put = go[:, None] & (kcol[None, :] == slot[:, None])
                    top_v = tl.where(put, mt[:, None], top_v)
                    top_i = tl.where(put, t_i[:, None], top_i)
                    work = tl.where(kk[None, :] == t_i[:, None], _FILL, work)
        l_i = l_i * alpha + tl.sum(p, 1)
        m_i = m_new

    valid = l_i > 0.0
    lse2 = m_i + tl.log2(l_i)  # -inf where no key is visible
    inv_l = 1.0 / l_i
    if not LSE_GIVEN:  # the second pass reads O_LSE; leave it as the first pass wrote it
        tl.store(O_LSE + out_row, lse2 * _LN2, mask=row_ok)
    if DO_ENT:
        tl.store(O_ENT + out_row, _or_nan(valid, (tl.log2(l_i) + a_i * inv_l) * _LN2), mask=row_ok)
    if DO_FK:
        tl.store(O_FK + out_row, _or_nan(valid, fk_i * inv_l), mask=row_ok)
    if DO_LAG:
        lag = lag_acc * (tl.exp2(m_lag - m_i) * inv_l)[:, None]
        tl.store(O_LAG + out_row[:, None] * (n_edges - 1) + ecol[None, :], _or_nan(valid[:, None], lag),
                 mask=row_ok[:, None] & (ecol[None, :] < n_edges - 1))
    if DO_SPANS:
        span = span_acc * (tl.exp2(m_span - m_i) * inv_l)[:, None]
        tl.store(O_SPAN + out_row[:, None] * n_spans + scol[None, :], _or_nan(valid[:, None], span),
                 mask=row_ok[:, None] & (scol[None, :] < n_spans))
    if TOPK > 1:
        o = out_row[:, None] * TOPK + kcol[None, :]
        ok = row_ok[:, None] & (kcol[None, :] < TOPK)
        tl.store(O_TI + o, top_i.to(tl.int64), mask=ok)
        tl.store(O_TV + o, tl.where(top_i >= 0, top_v * _LN2, -_INF), mask=ok)
    elif TOPK == 1:
        tl.store(O_TI + out_row, top_i.to(tl.int64), mask=row_ok)
        tl.store(O_TV + out_row, tl.where(top_i >= 0, top_v * _LN2, -_INF), mask=row_ok)


@triton.jit
def _target_kernel(
    Q, K, KMASK, TARGETS, TLAGS, LSE, O_TP, O_TL,
    sqb, sqh, sqn, sqd, skb, skh, skn, skd,
    Hq, Nq, Nk, G, q_offset, window, n_tlags, scale, softcap,
    D: tl.constexpr, D_PAD: tl.constexpr, BLOCK_Q: tl.constexpr,
    HAS_WINDOW: tl.constexpr, HAS_KMASK: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
):
    """Score and probability of each query's target keys (target + lag), given the row log-sum-exp."""
    pid_h = tl.program_id(1)
    b = (pid_h // Hq).to(tl.int64)
    h = (pid_h % Hq).to(tl.int64)
    qi = tl.program_id(0) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    row_ok = qi < Nq
    qpos = qi + q_offset
    out_row = (b * Hq + h) * Nq + qi
    dd = tl.arange(0, D_PAD)
    d_ok = dd < D
    qf = tl.load(Q + b * sqb + h * sqh + qi[:, None].to(tl.int64) * sqn + dd[None, :] * sqd,
                 mask=row_ok[:, None] & d_ok[None, :], other=0.0).to(tl.float32)
    k_base = K + b * skb + (h // G) * skh
    lse2 = tl.load(LSE + out_row, mask=row_ok, other=0.0) * _LOG2E
    tg = tl.load(TARGETS + b * Nq + qi, mask=row_ok, other=-1)
    for li in range(n_tlags):
        tk = tg + tl.load(TLAGS + li)
        seen = row_ok & (lse2 > -_INF) & (tg >= 0) & (tk >= 0) & (tk <= qpos)
        if HAS_WINDOW:
            seen = seen & (tk > qpos - window)
        if HAS_KMASK:
            seen = seen & (tl.load(KMASK + b * Nk + tk, mask=seen, other=0) != 0)
        kv = tl.load(k_base + tk[:, None].to(tl.int64) * skn + dd[None, :] * skd,
                     mask=seen[:, None] & d_ok[None, :], other=0.0)
        s2 = _log2_score(tl.sum(qf * kv.to(tl.float32), 1), scale, softcap, HAS_SOFTCAP)
        at = out_row * n_tlags + li
        tl.store(O_TL + at, _or_nan(seen, s2 * _LN2), mask=row_ok)
        tl.store(O_TP + at, _or_nan(seen, tl.exp2(s2 - lse2)), mask=row_ok)


def interpreting() -> bool:
    """True when this module's kernels run in Triton's CPU interpreter: TRITON_INTERPRET=1 was set before the
    module was imported (Triton decides when it decorates a kernel) and is still set (the interpreter reads it)."""
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(_stats_kernel, InterpretedFunction) and os.environ.get("TRITON_INTERPRET", "0") == "1"


def default_config(dtype: torch.dtype, head_dim: int, precision: str = "tf32", *, topk: int = 0,
                   n_edges: int = 0, n_spans: int = 0) -> dict:
    """Launch shape chosen by dtype, head size and what was requested, so that no configuration spills registers.

    Small tiles in the interpreter (many tiles even at tiny N). On a GPU the per-row state (top-k slots, lag
    bins, spans) and the query tile share each thread's 255 registers: rows per program are halved when that
    state is large; exact float32 dots ("ieee") run on FMA units and take the smallest tiles. The register and
    spill counts behind these choices: docs/kernels.md (AOT compile for sm_90 and sm_80).
    """
    if interpreting():
        return dict(block_r=32, block_n=16, num_warps=4, num_stages=1)
    heavy = 2 * _pow2(topk) * (topk > 1) + _pow2(n_edges) * (n_edges > 0) + _pow2(n_spans) * (n_spans > 0) > 32
    if dtype == torch.float32 and precision == "ieee":  # D=256 with heavy state spilled 3,264 B at 4 warps
        return dict(block_r=32, block_n=32, num_warps=8 if heavy and head_dim > 128 else 4, num_stages=1)
    wide = dtype == torch.float32  # tf32 operands take twice the registers and shared memory of bf16
    if head_dim > 128:  # Gemma 3 (256)
        return dict(block_r=32 if wide and heavy else 64, block_n=64, num_warps=8, num_stages=2)
    if heavy or wide:
        return dict(block_r=64, block_n=64, num_warps=8 if heavy and head_dim > 64 else 4, num_stages=2)
    return dict(block_r=128, block_n=64, num_warps=4, num_stages=2)  # benchmarks/attention_stats.py --variants


def target_block(head_dim: int) -> int:
    """Queries per program of the target kernel: its query and key rows stay in registers (D x BLOCK_Q float32)."""
    if interpreting():
        return 16
    return 64 if head_dim <= 64 else 32 if head_dim <= 128 else 16


def _pow2(n: int) -> int:
    return 1 if n <= 1 else triton.next_power_of_2(n)


@dataclass
class Launch:
    """One kernel launch: kernel[grid](*args, **kwargs) (kwargs hold the constexprs and num_warps/num_stages)."""

    kernel: object
    grid: tuple
    args: tuple
    kwargs: dict

    def run(self):
        self.kernel[self.grid](*self.args, **self.kwargs)


def triton_attention_stats(q: torch.Tensor, k: torch.Tensor, request: AttentionStatsRequest, *, scale: float,
                           window: int | None = None, key_mask: torch.Tensor | None = None,
                           softcap: float | None = None, passes: int = 1, group_heads: bool = True,
                           config: dict | None = None, precision: str = "tf32",
                           poison: float | None = None) -> dict[str, torch.Tensor]:
    """Per-query attention statistics (see AttentionStatsRequest) from the streaming Triton kernel.

    Inputs are checked by `attention_stats`. passes=2 runs the two-pass form; group_heads=False gives each query
    head its own programs (K tiles loaded once per query head); precision is the float32 dot ("tf32" tensor
    cores, or "ieee" exact float32); poison fills outputs before launch (tests check every element was written).
    """
    out, launches = plan_launches(q, k, request, scale=scale, window=window, key_mask=key_mask, softcap=softcap,
                                  passes=passes, group_heads=group_heads, config=config, precision=precision,
                                  poison=poison)
    for launch in launches:
        launch.run()
    topk_score = out.pop("topk_score", None)
    if topk_score is not None:
        out["topk_index"], out["topk_prob"] = sorted_topk(out["topk_index"], topk_score, out["lse"])
    return out


def plan_launches(q: torch.Tensor, k: torch.Tensor, request: AttentionStatsRequest, *, scale: float,
                  window: int | None = None, key_mask: torch.Tensor | None = None, softcap: float | None = None,
                  passes: int = 1, group_heads: bool = True, config: dict | None = None, precision: str = "tf32",
                  poison: float | None = None) -> tuple[dict[str, torch.Tensor], list[Launch]]:
    """The output tensors and the kernel launches that fill them, without running anything (with tensors on the
    "meta" device this gives the real launch arguments to compile ahead of time: workbench.kernels.aot)."""
    b, hq, nq, d = q.shape
    hkv, nk = k.shape[1], k.shape[2]
    dev = q.device
    topk = request.topk or 0
    n_edges = request.lag_bins.numel() if request.lag_bins is not None else 0
    n_spans = request.spans.shape[1] if request.spans is not None else 0
    cfg = {**default_config(q.dtype, d, precision, topk=topk, n_edges=n_edges, n_spans=n_spans), **(config or {})}
    gp = hq // hkv if group_heads else 1
    dot_f32 = interpreting() and q.dtype == torch.bfloat16

    def new(shape, dtype=torch.float32):
        t = torch.empty(shape, dtype=dtype, device=dev)
        return t if poison is None else t.fill_(-7 if not dtype.is_floating_point else poison)

    def ints(t):
        return device_ints(t, dev)

    dummy = ints(torch.zeros(1))
    out: dict[str, torch.Tensor] = {"lse": new((b, hq, nq))}
    if request.entropy:
        out["entropy"] = new((b, hq, nq))
    if request.first_k is not None:
        out["first_k_mass"] = new((b, hq, nq))
    edges = ints(request.lag_bins) if request.lag_bins is not None else dummy
    if request.lag_bins is not None:
        out["lag_mass"] = new((b, hq, nq, n_edges - 1))
    spans = ints(request.spans) if request.spans is not None else dummy
    if request.spans is not None:
        out["span_mass"] = new((b, hq, nq, n_spans))
    targets = ints(request.targets) if request.targets is not None else dummy
    tlags = ints(torch.tensor(request.target_lags))
    if request.targets is not None:
        out["target_prob"] = new((b, hq, nq, len(request.target_lags)))
        out["target_logit"] = new((b, hq, nq, len(request.target_lags)))
    if topk:
        out["topk_index"] = new((b, hq, nq, topk), torch.int64)
        out["topk_score"] = new((b, hq, nq, topk))
    kmask = key_mask.to(device=dev, dtype=torch.int8).contiguous() if key_mask is not None else dummy
    grid = (triton.cdiv(nq * gp, cfg["block_r"]), b * (hq // gp))
    exact = q.dtype == torch.float32 and precision == "ieee"

    def stats_launch(lse_in, stats: bool) -> Launch:
        f = (lambda name: out.get(name, dummy) if stats else dummy)
        args = (q, k, kmask, edges, spans, lse_in,
                out["lse"], f("entropy"), f("first_k_mass"), f("span_mass"), f("lag_mass"),
                f("topk_index"), f("topk_score"),
                *q.stride(), *k.stride(),
                hq, nq, nk, hq // gp, hq // hkv, nk - nq, window or 0, request.first_k or 0,
                n_edges, n_spans, float(scale), float(softcap or 1.0))
        kwargs = dict(
            D=d, D_PAD=max(16, _pow2(d)), GP=gp, BLOCK_R=cfg["block_r"], BLOCK_N=cfg["block_n"],
            HAS_WINDOW=window is not None, HAS_KMASK=key_mask is not None, HAS_SOFTCAP=softcap is not None,
            LSE_GIVEN=lse_in is not dummy,
            DO_ENT=stats and request.entropy, DO_FK=stats and request.first_k is not None,
            DO_SPANS=stats and request.spans is not None, S_PAD=_pow2(n_spans) if stats and n_spans else 1,
            DO_LAG=stats and request.lag_bins is not None, E_PAD=_pow2(n_edges) if stats and n_edges else 1,
            TOPK=topk if stats else 0, K_PAD=_pow2(topk) if stats and topk else 1,
            PRECISION="ieee" if exact or dot_f32 else "tf32", DOT_F32=dot_f32,
            num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
        return Launch(_stats_kernel, grid, args, kwargs)

    launches = [stats_launch(dummy, stats=True)] if passes != 2 else [stats_launch(dummy, stats=False),
                                                                       stats_launch(out["lse"], stats=True)]
    if request.targets is not None:
        block_q = target_block(d)
        launches.append(Launch(_target_kernel, (triton.cdiv(nq, block_q), b * hq), (
            q, k, kmask, targets, tlags, out["lse"], out["target_prob"], out["target_logit"],
            *q.stride(), *k.stride(), hq, nq, nk, hq // hkv, nk - nq, window or 0, len(request.target_lags),
            float(scale), float(softcap or 1.0)), dict(
            D=d, D_PAD=max(16, _pow2(d)), BLOCK_Q=block_q, HAS_WINDOW=window is not None,
            HAS_KMASK=key_mask is not None, HAS_SOFTCAP=softcap is not None, num_warps=4)))
    return out, launches


@functools.lru_cache(maxsize=64)
def _cached_ints(values: tuple, shape: tuple, device: torch.device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int32, device=device).reshape(shape)


def device_ints(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """t as contiguous int32 on device; small host tensors (edges, spans, lags) are cached per device, so repeated
    calls (one per layer) make no blocking host-to-device copy."""
    if t.device == device or t.numel() > 4096:
        return t.to(device=device, dtype=torch.int32).contiguous()
    return _cached_ints(tuple(t.flatten().tolist()), tuple(t.shape), device)


def sorted_topk(index: torch.Tensor, score: torch.Tensor, lse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Order a top-k set by score descending, ties by lowest index; probability exp(score - lse), 0 for empty slots."""
    if index.shape[-1] > 1:
        order = torch.argsort(torch.where(index < 0, torch.iinfo(torch.int64).max, index), dim=-1, stable=True)
        index, score = index.gather(-1, order), score.gather(-1, order)
        order = torch.argsort(score, dim=-1, descending=True, stable=True)
        index, score = index.gather(-1, order), score.gather(-1, order)
    prob = torch.where(index >= 0, torch.exp(score - lse[..., None]), 0.0)
    return index, prob

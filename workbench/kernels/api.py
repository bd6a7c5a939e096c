"""`attention_stats`: checks inputs, picks a backend (Triton, fast CPU, float64-grade reference), adds rows and means."""

from __future__ import annotations

import importlib.util

import torch

from workbench.errors import InputError
from workbench.kernels.cpu_stats import cpu_attention_stats
from workbench.kernels.reduce import mean_over_queries
from workbench.kernels.reference import attention_rows, reference_attention_stats
from workbench.kernels.request import AttentionStatsRequest

BACKENDS = ("auto", "triton", "cpu", "reference")
KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
PRECISIONS = ("tf32", "ieee")


def attention_stats(q: torch.Tensor, k: torch.Tensor, request: AttentionStatsRequest, *, scale: float | None = None,
                    window: int | None = None, key_mask: torch.Tensor | None = None, softcap: float | None = None,
                    backend: str = "auto", precision: str = "tf32") -> dict[str, torch.Tensor]:
    """Statistics of causal softmax(scale * q k^T) rows, queries aligned to the end of the keys, without N x N.

    q (B,Hq,Nq,D) and k (B,Hkv,Nk,D) post-RoPE; query i sits at position i + Nk - Nq and sees keys j <= it,
    and with a sliding window only keys with position - window < j (transformers' convention). Query head h uses
    key head h // (Hq // Hkv). key_mask (B,Nk) is True for real tokens. softcap applies tanh(s/c)*c to the scaled
    scores (Gemma 2). Always returns "lse" (B,Hq,Nq) float32, the natural log-sum-exp of each row's scores (-inf
    for a row that sees no key); rows that see no key get NaN statistics. backend "auto" runs the Triton kernel
    on CUDA tensors, the reference on float64 inputs and the fast float32 tile path ("cpu") otherwise; "triton"
    on CPU tensors needs TRITON_INTERPRET=1. precision ("tf32" or "ieee") sets the Triton kernel's float32 dot.
    """
    scale = check_inputs(q, k, request, scale=scale, window=window, key_mask=key_mask, softcap=softcap,
                         precision=precision)
    backend = resolve_backend(backend, q)
    if backend == "triton":
        from workbench.kernels.triton_stats import MAX_BINS, MAX_TOPK, interpreting, triton_attention_stats

        if q.dtype not in KERNEL_DTYPES:
            raise InputError(f"the Triton backend takes float16, bfloat16 or float32 inputs, got {q.dtype}; "
                             "cast the inputs or use backend='reference'")
        if not q.is_cuda and not interpreting():
            raise InputError("backend='triton' needs CUDA tensors, or TRITON_INTERPRET=1 set before "
                             "workbench.kernels.triton_stats is imported (CPU interpreter, slow); use "
                             "backend='reference' on the CPU")
        if (request.topk or 0) > MAX_TOPK:
            raise InputError(f"the Triton backend keeps at most top-{MAX_TOPK} in registers; ask for rows= "
                             "(exact rows) or use backend='reference'")
        for name, t in (("lag_bins", request.lag_bins), ("spans", request.spans)):
            if t is not None and (t.numel() if name == "lag_bins" else t.shape[1]) > MAX_BINS:
                raise InputError(f"the Triton backend takes at most {MAX_BINS} {name}; use fewer or "
                                 "backend='reference'")
        out = triton_attention_stats(q, k, request, scale=scale, window=window, key_mask=key_mask,
                                     softcap=softcap, precision=precision)
    elif backend == "cpu":
        out = cpu_attention_stats(q, k, request, scale=scale, window=window, key_mask=key_mask, softcap=softcap)
    else:
        out = reference_attention_stats(q, k, request, scale=scale, window=window, key_mask=key_mask,
                                        softcap=softcap)
    if backend != "reference" and request.rows is not None:
        out["rows"] = attention_rows(q, k, request.rows, scale=scale, window=window, key_mask=key_mask,
                                     softcap=softcap)
    out["lse"] = out["lse"].float()
    if request.reduce == "mean":
        nq, nk = q.shape[2], k.shape[2]
        valid = key_mask[:, nk - nq:] if key_mask is not None else torch.ones(q.shape[0], nq, dtype=torch.bool,
                                                                               device=q.device)
        skip = ("lse", "topk_index", "topk_prob", "rows")
        out.update({name: mean_over_queries(t, valid) for name, t in out.items() if name not in skip})
    return out


def resolve_backend(backend: str, q: torch.Tensor) -> str:
    """The backend that runs: "auto" means Triton for CUDA tensors of a kernel dtype when triton is installed, the
    reference for float64 inputs, else the float32 tile path "cpu" (also on the CPU under TRITON_INTERPRET=1: the
    interpreter is for tests; ask for it by name)."""
    if backend not in BACKENDS:
        raise InputError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend != "auto":
        return backend
    if q.is_cuda and q.dtype in KERNEL_DTYPES and importlib.util.find_spec("triton") is not None:
        return "triton"
    return "reference" if q.dtype == torch.float64 else "cpu"


def check_inputs(q, k, request, *, scale, window, key_mask, softcap, precision="tf32") -> float:
    """Raise InputError naming the fix for bad shapes or options; return the scale (default D**-0.5)."""
    if not isinstance(request, AttentionStatsRequest):
        raise InputError(f"request must be an AttentionStatsRequest, got {type(request).__name__}")
    for name, t in (("q", q), ("k", k)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            raise InputError(f"{name} must be a 4-D tensor (batch, heads, tokens, head_dim), got "
                             f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
        if not t.dtype.is_floating_point:
            raise InputError(f"{name} must be a floating-point tensor, got {t.dtype}")
    b, hq, nq, d = q.shape
    _, hkv, nk, dk = k.shape
    if q.dtype != k.dtype or q.device != k.device:
        raise InputError(f"q and k must share dtype and device, got {q.dtype}/{q.device} and {k.dtype}/{k.device}")
    if k.shape[0] != b or dk != d:
        raise InputError(f"q {tuple(q.shape)} and k {tuple(k.shape)} must agree on batch and head_dim")
    if hkv < 1 or hq % hkv:
        raise InputError(f"query heads ({hq}) must be a multiple of key/value heads ({hkv}); pass k without "
                         "repeating or slicing heads")
    if nq < 1 or nk < nq:
        raise InputError(f"need 1 <= Nq <= Nk (queries aligned to the end of the keys), got Nq={nq}, Nk={nk}")
    if window is not None and (not isinstance(window, int) or window < 1):
        raise InputError(f"window must be None or an int >= 1 (transformers' sliding_window), got {window!r}")
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {PRECISIONS} (the Triton kernel's float32 dot: tf32 tensor cores, "
                         f"or exact float32), got {precision!r}")
    if softcap is not None and not softcap > 0:
        raise InputError(f"softcap must be None or > 0, got {softcap!r}")
    if key_mask is not None and (key_mask.dtype != torch.bool or tuple(key_mask.shape) != (b, nk)):
        raise InputError(f"key_mask must be a bool tensor of shape (B, Nk) = ({b}, {nk}), True = real token; got "
                         f"{key_mask.dtype} {tuple(key_mask.shape)}")
    if request.spans is not None and request.spans.shape[0] != b:
        raise InputError(f"spans must have one row per batch item ({b}), got {tuple(request.spans.shape)}")
    if request.targets is not None and tuple(request.targets.shape) != (b, nq):
        raise InputError(f"targets must have shape (B, Nq) = ({b}, {nq}), got {tuple(request.targets.shape)}")
    if request.rows is not None and bool(((request.rows < 0) | (request.rows >= nq)).any()):
        raise InputError(f"rows must be query indices in [0, {nq})")
    return float(d ** -0.5 if scale is None else scale)

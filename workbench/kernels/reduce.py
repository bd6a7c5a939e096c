"""Reduction of per-query statistics to per-head numbers."""

from __future__ import annotations

import torch


def mean_over_queries(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean of x (B,H,Nq,...) over queries with valid (B,Nq) True and a non-NaN value -> (B,H,...); NaN if none."""
    ok = valid.to(x.device).reshape(valid.shape[0], 1, valid.shape[1], *([1] * (x.dim() - 3))) & ~torch.isnan(x)
    return torch.where(ok, x, 0).sum(2) / ok.sum(2)

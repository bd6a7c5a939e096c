"""Attention sinks (Gu et al. 2024, "When Attention Sink Emerges in Language Models")."""

from __future__ import annotations

import torch


def key_importance(patterns: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """alpha_k = sum_{i>=k} A[i, k] / (T - k): mean attention key k receives from the queries that see it (Gu et al. 2024); (..., B, Nk), summed in ``dtype`` if given."""
    n_q, n_k = patterns.shape[-2:]
    if n_q != n_k:
        raise ValueError("key importance needs full square patterns (all queries)")
    received = patterns.sum(-2, dtype=dtype)
    return received / torch.arange(n_k, 0, -1, dtype=received.dtype, device=received.device)


def sink_rate(patterns: torch.Tensor, key: int = 0, epsilon: float = 0.3) -> torch.Tensor:
    """Share of samples where alpha_key > epsilon (Gu et al. 2024's Sink_k^eps per head; eps = 0.3); [0, 1]."""
    return sink_items(patterns, key, epsilon)[0].mean(-1)


def sink_items(patterns: torch.Tensor, key: int = 0, epsilon: float = 0.3) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample (..., B): whether alpha_key > epsilon (1.0 or 0.0; their mean is sink_rate), and alpha_key itself (Gu et al. 2024)."""
    alpha = key_importance(patterns)[..., key]
    return (alpha > epsilon).to(alpha.dtype), alpha

"""The repeated-token scores from streamed statistics (lag histograms, target mass), for contexts too long for patterns.

Inputs have shape (..., B, Nq, bins) or (..., B, Nq, lags) as the kernels return them (batch as the
third-last axis); each function equals its exact counterpart in ``scores.induction`` (tested).
"""

from __future__ import annotations

import torch


def _bin_index(edges: torch.Tensor, lag: int) -> int:
    """Index of the one-lag-wide bin [lag, lag+1) among the edges; ValueError if there is none."""
    edges = edges.tolist()
    if lag not in edges or edges.index(lag) + 1 >= len(edges) or edges[edges.index(lag) + 1] != lag + 1:
        raise ValueError(f"no one-lag bin [{lag}, {lag + 1}) among the edges {edges}")
    return edges.index(lag)


def mass_at_lags(lag_mass: torch.Tensor, edges: torch.Tensor, lags, queries: torch.Tensor,
                 first_key: int = 0) -> torch.Tensor:
    """Mean over (batch, selected queries) of the mass in the one-lag bins [l, l+1), l in ``lags``, counting keys >= first_key only."""
    n = lag_mass.shape[-2]
    pos = torch.arange(n)
    mass = sum(lag_mass[..., _bin_index(edges, lag)] * (pos - lag >= first_key) for lag in lags)  # (..., B, Nq)
    sel = queries.to(mass.device)
    return (mass * sel).sum((-1, -2)) / sel.sum()


def previous_token_from_lags(lag_mass: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """previous_token_score from a lag histogram: mean mass at lag 1 over queries i >= 1."""
    b, n = lag_mass.shape[-3], lag_mass.shape[-2]
    queries = (torch.arange(n) >= 1).expand(b, n)
    return mass_at_lags(lag_mass, edges, [1], queries)


def duplicate_token_from_lags(lag_mass: torch.Tensor, edges: torch.Tensor, seq_len: int, n_repeats: int,
                              offset: int) -> torch.Tensor:
    """duplicate_token_score on repeated distinct-token blocks: mass at lags k*seq_len over queries in later repeats."""
    b, n = lag_mass.shape[-3], lag_mass.shape[-2]
    queries = (torch.arange(n) >= offset + seq_len).expand(b, n)
    return mass_at_lags(lag_mass, edges, [k * seq_len for k in range(1, n_repeats)], queries, first_key=offset)


def target_mass_from_stats(target_prob: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """target_mass from the kernels' target_prob (..., B, Nq, 1): mean over queries with a target; a target outside the visible keys (NaN) counts 0."""
    prob = torch.nan_to_num(target_prob[..., 0], nan=0.0)
    valid = (targets >= 0).to(prob.device)
    return (prob * valid).sum((-1, -2)) / valid.sum()

"""The repeated-token scores from streamed statistics (lag histograms, target mass), for contexts too long for patterns.

Inputs have shape (..., B, Nq, bins) or (..., B, Nq, lags) as the kernels return them (batch as the
third-last axis); each function equals its exact counterpart in ``scores.induction`` (tested), and returns,
like it, the per-sequence values (..., B) and query counts (B,) whose ``item_mean`` is the score.
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
                 first_key: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sequence (..., B): mean over its selected queries of the mass in the one-lag bins [l, l+1), l in ``lags``, counting keys >= first_key only; and the query count (B,)."""
    n = lag_mass.shape[-2]
    pos = torch.arange(n)
    mass = sum(lag_mass[..., _bin_index(edges, lag)] * (pos - lag >= first_key) for lag in lags)  # (..., B, Nq)
    sel = queries.to(mass.device)
    counts = sel.sum(-1)
    return (mass * sel).sum(-1) / counts.clamp(min=1), counts


def previous_token_from_lags(lag_mass: torch.Tensor, edges: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """previous_token_items from a lag histogram: per sequence, mean mass at lag 1 over queries i >= 1."""
    b, n = lag_mass.shape[-3], lag_mass.shape[-2]
    queries = (torch.arange(n) >= 1).expand(b, n)
    return mass_at_lags(lag_mass, edges, [1], queries)


def duplicate_token_from_lags(lag_mass: torch.Tensor, edges: torch.Tensor, seq_len: int, n_repeats: int,
                              offset: int) -> tuple[torch.Tensor, torch.Tensor]:
    """duplicate_token_items on repeated distinct-token blocks: per sequence, mass at lags k*seq_len over queries in later repeats."""
    b, n = lag_mass.shape[-3], lag_mass.shape[-2]
    queries = (torch.arange(n) >= offset + seq_len).expand(b, n)
    return mass_at_lags(lag_mass, edges, [k * seq_len for k in range(1, n_repeats)], queries, first_key=offset)


def target_mass_from_stats(target_prob: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """target_mass_items from the kernels' target_prob (..., B, Nq, 1): per sequence, mean over queries with a target; a target outside the visible keys (NaN) counts 0."""
    prob = torch.nan_to_num(target_prob[..., 0], nan=0.0)
    valid = (targets >= 0).to(prob.device)
    counts = valid.sum(-1)
    return (prob * valid).sum(-1) / counts.clamp(min=1), counts

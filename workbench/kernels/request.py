"""What `attention_stats` should compute: a dataclass of optional statistics, checked when built."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from workbench.errors import InputError

REDUCTIONS = ("none", "mean")


@dataclass(frozen=True)
class AttentionStatsRequest:
    """Statistics of causal attention rows to compute; each unset field is skipped.

    entropy      natural-log entropy of each query's attention row -> "entropy" (B,Hq,Nq)
    first_k      mass on key positions 0..first_k-1 (sinks) -> "first_k_mass" (B,Hq,Nq)
    spans        (B,S,2) int [start, end) key spans per batch item -> "span_mass" (B,Hq,Nq,S)
    lag_bins     (n_bins+1,) increasing int edges over lag = query_pos - key_pos -> "lag_mass" (B,Hq,Nq,n_bins),
                 bin b holds keys with edges[b] <= lag < edges[b+1]
    targets      (B,Nq) int key index per query, -1 = none, with target_lags -> "target_prob" and
                 "target_logit" (B,Hq,Nq,L): attention to / scaled score of key targets+lag, NaN if none or not visible
    topk         k -> "topk_index" (B,Hq,Nq,k) int64 and "topk_prob", sorted descending, ties: lowest index first;
                 slots beyond the visible keys hold index -1 and probability 0
    rows         (R,) query indices -> "rows" (B,Hq,R,Nk) exact attention rows, zeros where not visible
    reduce       "none", or "mean": average each per-query statistic over valid queries (key_mask True at the
                 query's position; NaN values, e.g. queries without a target, left out); topk, rows, lse never reduced
    """

    entropy: bool = False
    first_k: int | None = None
    spans: torch.Tensor | None = None
    lag_bins: torch.Tensor | None = None
    targets: torch.Tensor | None = None
    target_lags: tuple[int, ...] = (0,)
    topk: int | None = None
    rows: torch.Tensor | None = None
    reduce: str = "none"

    def __post_init__(self):
        if self.first_k is not None and (not isinstance(self.first_k, int) or self.first_k < 1):
            raise InputError(f"first_k must be a positive int (number of leading key positions), got {self.first_k!r}")
        if self.topk is not None and (not isinstance(self.topk, int) or self.topk < 1):
            raise InputError(f"topk must be a positive int, got {self.topk!r}")
        if self.reduce not in REDUCTIONS:
            raise InputError(f"reduce must be one of {REDUCTIONS}, got {self.reduce!r}")
        lags = tuple(self.target_lags)
        if not lags or not all(isinstance(x, int) for x in lags):
            raise InputError(f"target_lags must be a non-empty tuple of ints, e.g. (0,) or tuple(range(-8, 8)); "
                             f"got {self.target_lags!r}")
        object.__setattr__(self, "target_lags", lags)
        for name in ("spans", "lag_bins", "targets", "rows"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, torch.Tensor) or value.dtype.is_floating_point
                                      or value.dtype == torch.bool):
                raise InputError(f"{name} must be an integer torch.Tensor, got {type(value).__name__}"
                                 f"{'' if not isinstance(value, torch.Tensor) else ' of ' + str(value.dtype)}")
        if self.lag_bins is not None:
            edges = self.lag_bins
            if edges.dim() != 1 or edges.numel() < 2 or bool((edges[1:] <= edges[:-1]).any()) or int(edges[0]) < 0:
                raise InputError("lag_bins must be a 1-D tensor of at least 2 strictly increasing edges >= 0, "
                                 f"e.g. log_lag_edges(2**17); got {edges.tolist()}")
        if self.spans is not None:
            if self.spans.dim() != 3 or self.spans.shape[-1] != 2 or self.spans.shape[1] < 1:
                raise InputError(f"spans must have shape (B, S, 2) with S >= 1, got {tuple(self.spans.shape)}")
            if bool((self.spans[..., 1] < self.spans[..., 0]).any()) or bool((self.spans < 0).any()):
                raise InputError("spans must be [start, end) pairs with 0 <= start <= end")
        if self.targets is not None and self.targets.dim() != 2:
            raise InputError(f"targets must have shape (B, Nq), got {tuple(self.targets.shape)}")
        if self.rows is not None and (self.rows.dim() != 1 or self.rows.numel() < 1):
            raise InputError(f"rows must be a non-empty 1-D tensor of query indices, got {tuple(self.rows.shape)}")

    @classmethod
    def default(cls, targets: torch.Tensor | None = None, max_lag: int = 2**17, reduce: str = "none"):
        """The default statistics: entropy, first-4 mass, log-spaced lag histogram, top-1, and targets if given."""
        return cls(entropy=True, first_k=4, lag_bins=log_lag_edges(max_lag), targets=targets, topk=1, reduce=reduce)


def log_lag_edges(max_lag: int) -> torch.Tensor:
    """Lag-bin edges 0, 1, 2, 4, ..., 2**m with 2**m >= max_lag: bins [0,1), [1,2), [2,4), ..."""
    if max_lag < 1:
        raise InputError(f"max_lag must be >= 1, got {max_lag}")
    edges = [0, 1]
    while edges[-1] < max_lag:
        edges.append(edges[-1] * 2)
    return torch.tensor(edges, dtype=torch.int64)

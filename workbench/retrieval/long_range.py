"""Long-context heads: how much of a head's non-sink attention lands beyond a local window (METHODS.md s8).

For a query at position i, keys j with i - j >= window are *far*, the others *local*; the first
``n_sink`` keys (attention sinks; StreamingLLM keeps 4) and any extra sink positions are left out
and the rest renormalised:

    long_range[i] = far non-sink mass / all non-sink mass,

averaged over the queries i >= window + n_sink (every sink is then far, and at least one non-sink key
is far). It is computed from streamed statistics (``capture_stats``: lag-binned mass plus one span per
sink), so it never materialises N x N and runs at the model's full context on a GPU. A head is
*long-range* when the share exceeds ``threshold`` (RazorAttention and DuoAttention keep full attention
only for such heads; the rest keep sinks + a recent window). No paper fixes a threshold on this share
(RazorAttention and DuoAttention choose heads by a budget): 0.3 is our default, to be read against
``uniform_long_range`` (the share of uniform attention at the same length and window).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..errors import InputError
from ..kernels import AttentionStatsRequest
from ..patterns import capture_stats

N_SINK = 4  # StreamingLLM's attention-sink tokens (Xiao et al. 2024)
LONG_RANGE_THRESHOLD = 0.3  # our choice, see the module docstring


def _sink_spans(batch: int, n_sink: int, extra: Sequence[int]) -> tuple[torch.Tensor, list[int]]:
    starts = [0] + sorted({int(p) for p in extra if int(p) >= n_sink})
    ends = [n_sink] + [p + 1 for p in starts[1:]]
    spans = torch.tensor([[s, e] for s, e in zip(starts, ends)], dtype=torch.long)
    return spans[None].expand(batch, -1, -1).contiguous(), starts


def long_range_from_stats(lag_mass: torch.Tensor, span_mass: torch.Tensor, span_starts: Sequence[int],
                          window: int, n_sink: int, n_keys: int) -> torch.Tensor:
    """(..., B) mean far share over queries i >= window + n_sink from lag_mass (..., B, Nq, 2) [local, far] and span_mass (..., B, Nq, S) of the sink spans."""
    nq = lag_mass.shape[-2]
    pos = torch.arange(n_keys - nq, n_keys)
    local, far = lag_mass[..., 0].double(), lag_mass[..., 1].double()
    sink_far = span_mass[..., 0].double()  # the first n_sink keys: far for every query kept
    sink_local = torch.zeros_like(local)
    for s, start in enumerate(span_starts[1:], start=1):  # extra single-position sinks: far or local per query
        is_far = (pos - start >= window).to(local.dtype)
        sink_far = sink_far + span_mass[..., s].double() * is_far
        sink_local = sink_local + span_mass[..., s].double() * (1 - is_far)
    far_ns, local_ns = far - sink_far, local - sink_local
    share = far_ns / (far_ns + local_ns)
    keep = pos >= window + n_sink
    if not keep.any():
        raise InputError(f"no query lies at position >= window + n_sink = {window + n_sink}: use a longer text "
                         "or a smaller window")
    return share[..., keep].nanmean(-1)


@torch.no_grad()
def long_range_mass(subject, input_ids, window: int = 128, n_sink: int = N_SINK, sink_positions: Sequence[int] = (),
                    layers=None, backend: str = "auto") -> np.ndarray:
    """(L, H) mean share of non-sink attention beyond ``window`` tokens (queries i >= window + n_sink, averaged over the batch); streamed, exact."""
    ids = torch.as_tensor(input_ids)
    ids = ids[None] if ids.ndim == 1 else ids
    if not isinstance(window, int) or window < 1:
        raise InputError(f"window must be a positive number of tokens, got {window!r}")
    if n_sink < 1:
        raise InputError(f"n_sink must be >= 1 (the first token is always a sink), got {n_sink}")
    n = ids.shape[1]
    if n <= window + n_sink:
        raise InputError(f"the text has {n} tokens: long-range mass needs more than window + n_sink = "
                         f"{window + n_sink}; pass a longer text or a smaller window")
    spans, starts = _sink_spans(ids.shape[0], n_sink, sink_positions)
    request = AttentionStatsRequest(lag_bins=torch.tensor([0, window, n + 1]), spans=spans)
    cap = capture_stats(subject, ids, request, layers=layers, backend=backend)
    layers = sorted(cap.stats)
    out = np.full((subject.n_layers, subject.n_heads), np.nan)
    for layer in layers:
        st = cap.stats[layer]
        share = long_range_from_stats(st["lag_mass"].transpose(0, 1), st["span_mass"].transpose(0, 1), starts,
                                      window, n_sink, n)  # (H, B)
        out[layer] = share.mean(-1).numpy()
    return out


def uniform_long_range(n_tokens: int, window: int, n_sink: int = N_SINK) -> float:
    """The long-range share of a head attending uniformly (over non-sink keys), same queries: a reference level."""
    pos = np.arange(window + n_sink, n_tokens, dtype=np.float64)
    return float(np.mean((pos - window + 1 - n_sink) / (pos + 1 - n_sink)))


def classify_long_range(share: np.ndarray, threshold: float = LONG_RANGE_THRESHOLD) -> np.ndarray:
    """(L, H) labels 'long-range' (share > threshold) or 'local'."""
    return np.where(np.asarray(share) > threshold, "long-range", "local")


def layout_agreement(share: np.ndarray, layer_types: Sequence[str], threshold: float = LONG_RANGE_THRESHOLD):
    """Cross-table of the classification against the layer type ('sliding'/'full'): heads per (layer type, class)."""
    import pandas as pd

    labels = classify_long_range(share, threshold)
    types = np.repeat(np.asarray(layer_types)[:, None], labels.shape[1], axis=1)
    return pd.crosstab(pd.Series(types.ravel(), name="layer_type"), pd.Series(labels.ravel(), name="class"))

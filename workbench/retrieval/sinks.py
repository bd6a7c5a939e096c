"""Hidden attention sinks (Yu et al. 2024, ACT): keys other than the first sink that draw disproportionate attention.

A key's importance is Gu et al.'s alpha_k = sum_{i>=k} A[i,k] / (T-k) (``workbench.scores.key_importance``).
ACT marks keys with alpha_k > 0.1 as sinks and drops the first one found (usually position 0); the
rest are hidden sinks. Deviation: only keys seen by at least ``min_queries`` queries are candidates
(ACT has no such guard, but at T-k = 1 alpha_k is a single self-attention weight, so the last few keys
of every head would count). :class:`KeyImportanceRecorder` reduces each layer's exact patterns to
alpha as they are computed, so no N x N tensor is kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from ..errors import InputError
from ..models.attention import AttentionCall, AttentionHook, hooks_active
from ..scores.sinks import key_importance

HIDDEN_SINK_THRESHOLD = 0.1  # ACT's threshold on alpha_k
MIN_QUERIES = 16


class KeyImportanceRecorder(AttentionHook):
    """alpha_k (B, H, N) of every head of every layer, from exact patterns of full-sequence (prefill) calls."""

    def __init__(self, layers):
        self.layers = frozenset(layers)
        self.alpha: dict[int, torch.Tensor] = {}

    def pattern_heads(self, call: AttentionCall) -> list[int]:
        return list(range(call.n_heads)) if call.n_queries == call.n_keys else []

    def on_pattern(self, call, heads, pattern):
        self.alpha[call.layer] = key_importance(pattern.double()).float().cpu()


@torch.no_grad()
def key_importance_all(subject, input_ids, layers=None) -> torch.Tensor:
    """(L, H, B, N) alpha_k of every head on the batch (one forward pass, patterns reduced per layer)."""
    batch = subject.as_batch(input_ids)
    if "attention_mask" in batch and not bool(batch["attention_mask"].all()):
        raise InputError("key importance needs unpadded sequences of equal length: cut the texts to one length")
    layers = list(range(subject.n_layers)) if layers is None else list(layers)
    recorder = KeyImportanceRecorder(layers)
    with hooks_active(recorder):
        subject.model(input_ids=batch["input_ids"], use_cache=False, **subject.logits_kwargs(False))
    return torch.stack([recorder.alpha[l].transpose(0, 1) for l in layers])


def hidden_sinks(alpha: torch.Tensor, threshold: float = HIDDEN_SINK_THRESHOLD, min_queries: int = MIN_QUERIES) -> torch.Tensor:
    """Bool (..., N): alpha_k > threshold, excluding the first such key (ACT, Yu et al. 2024) and keys seen by < min_queries queries."""
    alpha = torch.as_tensor(alpha)
    n = alpha.shape[-1]
    sink = alpha > threshold
    has = sink.any(-1, keepdim=True)
    first = torch.zeros_like(sink).scatter(-1, sink.float().argmax(-1, keepdim=True), True) & has
    seen = torch.arange(n, 0, -1, device=alpha.device) >= min_queries  # T - k queries see key k
    return sink & ~first & seen


@dataclass
class HiddenSinkReport:
    """Per head: share of sequences with a hidden sink and mean summed alpha of its hidden sinks; a row per hidden sink."""

    rate: np.ndarray  # (L, H)
    mass: np.ndarray  # (L, H)
    sinks: pd.DataFrame  # sample, layer, head, position, token, alpha

    def tokens(self, top: int = 10) -> pd.DataFrame:
        """The tokens most often found as hidden sinks: count of (sample, head) hits, heads, mean alpha."""
        if self.sinks.empty:
            return pd.DataFrame(columns=["token", "hits", "heads", "mean_alpha"])
        g = self.sinks.assign(hd=self.sinks["layer"].astype(str) + "." + self.sinks["head"].astype(str))
        out = g.groupby("token").agg(hits=("alpha", "size"), heads=("hd", "nunique"), mean_alpha=("alpha", "mean"))
        return out.sort_values("hits", ascending=False).head(top).reset_index()


def hidden_sink_report(subject, input_ids, threshold: float = HIDDEN_SINK_THRESHOLD,
                       min_queries: int = MIN_QUERIES) -> HiddenSinkReport:
    """Hidden sinks of every head on a batch of equal-length texts: rates, masses and which positions/tokens."""
    ids = torch.as_tensor(input_ids)
    ids = ids[None] if ids.ndim == 1 else ids
    if ids.shape[1] <= min_queries:
        raise InputError(f"texts of {ids.shape[1]} tokens are too short for hidden sinks: use more than {min_queries}")
    alpha = key_importance_all(subject, ids)  # (L, H, B, N)
    mask = hidden_sinks(alpha, threshold, min_queries)
    rate = mask.any(-1).float().mean(-1).numpy()
    mass = (alpha * mask).sum(-1).mean(-1).numpy()
    l, h, b, k = torch.nonzero(mask, as_tuple=True)
    tokens = subject.to_str_tokens(ids[b, k]) if len(k) else []
    sinks = pd.DataFrame({"sample": b.numpy(), "layer": l.numpy(), "head": h.numpy(), "position": k.numpy(),
                          "token": tokens, "alpha": alpha[l, h, b, k].numpy()})
    return HiddenSinkReport(rate, mass, sinks)

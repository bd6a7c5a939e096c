"""Compile intervention specs into the workbench attention hook and apply them in a ``with`` block."""

from __future__ import annotations

import contextlib
from collections import defaultdict

import torch

from ..errors import InputError
from ..models.attention import AttentionCall, AttentionHook, hooks_active
from .specs import (HeadSpec, KnockOutKeys, ReplaceHead, ScaleHead, ScaleKeys, ZeroHead, ZeroQuery,
                    ZeroValue)


def expand_heads(subject, spec: HeadSpec) -> list[tuple[int, int]]:
    """The query heads a spec acts on: its heads, widened to their KV groups if ``group``; validated."""
    out = set()
    for layer, head in spec.heads:
        subject.check_head(layer, head)
        if spec.group:
            g = subject.kv_group[head]
            out.update((layer, h) for h in range(subject.n_heads) if subject.kv_group[h] == g)
        else:
            out.add((layer, head))
    return sorted(out)


class InterventionHook(AttentionHook):
    """One AttentionHook carrying every edit of a set of specs, grouped by layer."""

    def __init__(self, subject, specs):
        self.query_zero = defaultdict(list)
        self.score_edits = defaultdict(list)  # layer -> [(head, keys, addend)]
        self.z_edits = defaultdict(list)  # layer -> [(head, kind, arg, positions)]
        for spec in specs:
            if not isinstance(spec, HeadSpec):
                raise InputError(f"not an intervention spec: {spec!r}")
            for layer, head in expand_heads(subject, spec):
                self._add(spec, layer, head)
        self.layers = frozenset(self.query_zero) | frozenset(self.score_edits) | frozenset(self.z_edits)

    def _add(self, spec, layer, head):
        if isinstance(spec, (ZeroHead, ZeroValue)):
            self.z_edits[layer].append((head, "scale", 0.0, None))
        elif isinstance(spec, ScaleHead):
            self.z_edits[layer].append((head, "scale", spec.factor, None))
        elif isinstance(spec, ReplaceHead):
            key = (layer, head)
            if key not in spec.values:
                raise InputError(f"ReplaceHead has no values for L{layer}H{head}: pass values={{(l, h): tensor}}")
            self.z_edits[layer].append((head, "replace", spec.values[key], spec.positions))
        elif isinstance(spec, ZeroQuery):
            self.query_zero[layer].append(head)
        elif isinstance(spec, KnockOutKeys):
            self.score_edits[layer].append((head, spec.keys, float("-inf")))
        elif isinstance(spec, ScaleKeys):
            self.score_edits[layer].append((head, spec.keys, spec.log_factor))
        else:
            raise InputError(f"unsupported spec type {type(spec).__name__}")

    def edit_query(self, call: AttentionCall, query):
        heads = self.query_zero.get(call.layer)
        if not heads:
            return query
        query = query.clone()
        query[:, heads] = 0
        return query

    def edits_scores(self, call):
        return bool(self.score_edits.get(call.layer))

    def edit_scores(self, call, scores):
        edits = self.score_edits.get(call.layer)
        if not edits:
            return scores
        scores = scores.clone()
        for head, keys, addend in edits:
            keys = [k for k in keys if -call.n_keys <= k < call.n_keys]
            if keys:
                scores[:, head, :, keys] = scores[:, head, :, keys] + addend
        return scores

    def edit_z(self, call, z):
        edits = self.z_edits.get(call.layer)
        if not edits:
            return z
        z = z.clone()
        for head, kind, arg, positions in edits:
            rows = slice(None) if positions is None else _query_rows(call, positions)
            if kind == "scale":
                z[:, rows, head] = z[:, rows, head] * arg
            else:
                z[:, rows, head] = _replacement(arg, call, rows).to(z.dtype)
        return z


def _query_rows(call: AttentionCall, positions) -> torch.Tensor:
    """Indices into this call's queries of the absolute ``positions`` it contains."""
    start = call.n_keys - call.n_queries
    pos = torch.as_tensor(positions, dtype=torch.long)
    return pos[(pos >= start) & (pos < call.n_keys)] - start


def _replacement(values: torch.Tensor, call: AttentionCall, rows) -> torch.Tensor:
    """Broadcast replacement values ((D,), (N, D) or (B, N, D)) onto this call's selected queries."""
    if values.ndim == 1:
        return values
    start = call.n_keys - call.n_queries
    idx = torch.arange(start, call.n_keys)[rows]
    return values[..., idx.to(values.device), :] if values.ndim == 2 else values[:, idx.to(values.device)]


@contextlib.contextmanager
def apply(subject, *specs):
    """Apply intervention specs to every forward pass of ``subject`` inside the block (generation included)."""
    hook = InterventionHook(subject, specs)
    with hooks_active(hook):
        yield hook

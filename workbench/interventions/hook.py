"""Compile intervention specs into the workbench attention hook and apply them in a ``with`` block."""

from __future__ import annotations

import contextlib
from collections import defaultdict

import torch

from ..errors import InputError
from ..models.attention import AttentionCall, AttentionHook, hooks_active
from .specs import (AddToHead, HeadSpec, KnockOutKeys, ReplaceHead, ScaleHead, ScaleKeys, ZeroHead, ZeroQuery,
                    ZeroValue, key_positions)


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
        self.query_zero = defaultdict(list)  # layer -> [(head, rows)]
        self.score_edits = defaultdict(list)  # layer -> [(head, spec, addend, rows)]
        self.z_edits = defaultdict(list)  # layer -> [(head, kind, arg, positions, rows)]
        for spec in specs:
            if not isinstance(spec, HeadSpec):
                raise InputError(f"not an intervention spec: {spec!r}")
            rows = None if spec.rows is None else torch.as_tensor(spec.rows, dtype=torch.long)
            for layer, head in expand_heads(subject, spec):
                self._add(spec, layer, head, rows)
        self.layers = frozenset(self.query_zero) | frozenset(self.score_edits) | frozenset(self.z_edits)

    def _add(self, spec, layer, head, rows):
        if isinstance(spec, (ZeroHead, ZeroValue)):
            self.z_edits[layer].append((head, "scale", 0.0, None, rows))
        elif isinstance(spec, ScaleHead):
            self.z_edits[layer].append((head, "scale", spec.factor, None, rows))
        elif isinstance(spec, (ReplaceHead, AddToHead)):
            key = (layer, head)
            if key not in spec.values:
                name = type(spec).__name__
                raise InputError(f"{name} has no values for L{layer}H{head}: pass values={{(l, h): tensor}}")
            values = torch.as_tensor(spec.values[key])
            if rows is not None and values.ndim == 3 and values.shape[0] != len(rows):
                raise InputError(f"values for L{layer}H{head} have {values.shape[0]} rows but the spec selects "
                                 f"{len(rows)} batch rows: give one row of values per selected row")
            if isinstance(spec, AddToHead):
                self.z_edits[layer].append((head, "add", values * spec.factor, spec.positions, rows))
            else:
                self.z_edits[layer].append((head, "replace", values, spec.positions, rows))
        elif isinstance(spec, ZeroQuery):
            self.query_zero[layer].append((head, rows))
        elif isinstance(spec, KnockOutKeys):
            self.score_edits[layer].append((head, spec, float("-inf"), rows))
        elif isinstance(spec, ScaleKeys):
            self.score_edits[layer].append((head, spec, spec.log_factor, rows))
        else:
            raise InputError(f"unsupported spec type {type(spec).__name__}")

    def edit_query(self, call: AttentionCall, query):
        edits = self.query_zero.get(call.layer)
        if not edits:
            return query
        query = query.clone()
        for head, rows in edits:
            query[_batch_rows(rows, query.shape[0], query.device), head] = 0
        return query

    def edits_scores(self, call):
        return bool(self.score_edits.get(call.layer))

    def edit_scores(self, call, scores):
        edits = self.score_edits.get(call.layer)
        if not edits:
            return scores
        scores = scores.clone()
        for head, spec, addend, rows in edits:
            k = torch.as_tensor(key_positions(spec, call.n_keys), device=scores.device)
            r = _batch_rows(rows, scores.shape[0], scores.device)
            if not isinstance(r, torch.Tensor):
                r = torch.arange(scores.shape[0], device=scores.device)
            sub = scores[r, head]  # (R, Nq, Nk) copy
            sub[:, :, k] = sub[:, :, k] + addend
            scores[:, head] = scores[:, head].index_copy(0, r, sub)
        return scores

    def edit_z(self, call, z):
        edits = self.z_edits.get(call.layer)
        if not edits:
            return z
        z = z.clone()
        for head, kind, arg, positions, rows in edits:
            q = slice(None) if positions is None else _query_rows(call, positions).to(z.device)
            r = _batch_rows(rows, z.shape[0], z.device)
            idx = (r[:, None], q[None, :]) if isinstance(r, torch.Tensor) and isinstance(q, torch.Tensor) else (r, q)
            if kind == "scale":
                z[idx + (head,)] = z[idx + (head,)] * arg
            elif kind == "add":
                z[idx + (head,)] = z[idx + (head,)] + _replacement(arg, call, q).to(z.device, z.dtype)
            else:
                z[idx + (head,)] = _replacement(arg, call, q).to(z.device, z.dtype)
        return z


def _batch_rows(rows: torch.Tensor | None, batch: int, device):
    """Index of the selected batch rows (a slice for all), checked against this call's batch size."""
    if rows is None:
        return slice(None)
    if len(rows) and (int(rows.max()) >= batch or int(rows.min()) < -batch):
        raise InputError(f"a spec selects batch rows up to {int(rows.max())} but the batch has {batch} rows")
    return rows.to(device)


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
    idx = torch.arange(start, call.n_keys)[rows.cpu() if isinstance(rows, torch.Tensor) else rows]
    return values[..., idx.to(values.device), :] if values.ndim == 2 else values[:, idx.to(values.device)]


@contextlib.contextmanager
def apply(subject, *specs):
    """Apply intervention specs to every forward pass of ``subject`` inside the block (generation included).

    Nested blocks compose: the inner block's edits act on the outer block's result (ScaleHead 0.5 twice = 0.25).
    """
    hook = InterventionHook(subject, specs)
    with hooks_active(hook):
        yield hook

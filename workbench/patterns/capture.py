"""The one capture entry point: exact attention patterns (and head outputs, logits) for a batch.

``capture`` predicts the memory first and refuses, with the numbers and the alternative, when
the patterns would not fit; for long contexts use streamed statistics (``capture_stats``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import torch

from ..errors import CaptureMemoryError, InputError
from ..inputs import as_heads, positive_int, whole_number
from ..models.attention import AttentionCall, AttentionHook, hooks_active
from .memory import FLOAT32, available_bytes, human, pattern_bytes

HeadSel = dict[int, list[int]]


def select_heads(subject, heads=None, layers=None) -> HeadSel:
    """Normalise a head selection: None/"all", (layer, head) pairs or 'L18H6' strings, or a {layer: [heads]} dict."""
    if heads is None or (isinstance(heads, str) and heads == "all"):
        chosen = {layer: list(range(subject.n_heads)) for layer in (range(subject.n_layers) if layers is None else layers)}
    elif isinstance(heads, dict):
        chosen = {whole_number(layer, "a layer of heads"): sorted({whole_number(h, f"a head of layer {layer}") for h in hs})
                  for layer, hs in heads.items()}
    else:
        chosen = {}
        for layer, head in as_heads(heads):
            chosen.setdefault(layer, set()).add(head)
        chosen = {layer: sorted(hs) for layer, hs in chosen.items()}
    for layer, hs in chosen.items():
        for head in hs:
            subject.check_head(layer, head)
    if not chosen or not any(chosen.values()):
        raise InputError("no heads selected: pass heads='all', (layer, head) pairs, or layers=[...]")
    return dict(sorted(chosen.items()))


class PatternRecorder(AttentionHook):
    """Stores exact post-softmax patterns of the selected heads (float32, on the CPU), one entry per forward call."""

    def __init__(self, selection: HeadSel, rows: torch.Tensor | None = None):
        self.selection = selection
        self.layers = frozenset(selection)
        self.rows = rows
        self.patterns: dict[int, list[torch.Tensor]] = {layer: [] for layer in selection}

    def pattern_heads(self, call: AttentionCall) -> list[int]:
        return self.selection[call.layer]

    def on_pattern(self, call, heads, pattern):
        if self.rows is not None:
            pattern = pattern[:, :, self.rows.to(pattern.device)]
        self.patterns[call.layer].append(pattern.detach().to("cpu", torch.float32))


class ZRecorder(AttentionHook):
    """Stores each selected layer's per-head outputs z (B, N, H, D) before o_proj, as float32 on the CPU."""

    def __init__(self, layers: Iterable[int]):
        self.layers = frozenset(layers)
        self.z: dict[int, list[torch.Tensor]] = {layer: [] for layer in self.layers}

    def on_z(self, call, z):
        self.z[call.layer].append(z.detach().to("cpu", torch.float32))


@dataclass
class Capture:
    """Captured tensors for one batch. ``patterns[layer]``: (B, len(heads[layer]), Nq, Nk) float32."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor | None
    heads: HeadSel
    patterns: dict[int, torch.Tensor] = field(default_factory=dict)
    z: dict[int, torch.Tensor] = field(default_factory=dict)
    logits: torch.Tensor | None = None
    rows: torch.Tensor | None = None

    def pattern(self, layer: int, head: int) -> torch.Tensor:
        """(B, Nq, Nk) pattern of one captured head."""
        if layer not in self.heads or head not in self.heads[layer]:
            raise InputError(f"L{layer}H{head} was not captured; captured: {self.heads}")
        return self.patterns[layer][:, self.heads[layer].index(head)]

    def stacked(self) -> torch.Tensor:
        """All captured patterns as (B, n_layers_captured, n_heads_captured, Nq, Nk); needs the same heads in every layer."""
        shapes = {tuple(hs) for hs in self.heads.values()}
        if len(shapes) != 1:
            raise InputError("stacked() needs the same heads captured in every layer; use pattern(layer, head)")
        return torch.stack([self.patterns[layer] for layer in self.heads], dim=1)


def predict_capture_bytes(subject, selection: HeadSel, batch: int, n_tokens: int,
                          n_rows: int | None = None, batch_size: int | None = None) -> dict:
    """Bytes an exact capture keeps (host) and needs transiently per layer (device), before running it."""
    n_sel = sum(len(hs) for hs in selection.values())
    widest = max(len(hs) for hs in selection.values())
    step = min(batch_size or batch, batch)
    stored = pattern_bytes(batch, n_sel, n_rows or n_tokens, n_tokens)
    # scores + softmax of the widest layer, plus the model's own activations (generously 32 x hidden states)
    transient = 2 * pattern_bytes(step, widest, n_tokens, n_tokens) + 32 * step * n_tokens * subject.d_model * FLOAT32
    return {"stored": stored, "transient": transient, "n_heads": n_sel}


def _check_fits(subject, need: dict, batch: int, n_tokens: int) -> None:
    host = available_bytes(torch.device("cpu"))
    device = available_bytes(subject.device)
    on_cpu = subject.device.type == "cpu"
    total_host = need["stored"] + (need["transient"] if on_cpu else 0)
    if total_host > 0.8 * host or (not on_cpu and need["transient"] > 0.8 * device):
        raise CaptureMemoryError(
            f"capturing exact patterns of {need['n_heads']} heads for {batch} x {n_tokens} tokens needs "
            f"{human(need['stored'])} to keep (batch x heads x N x N x 4 bytes) plus {human(need['transient'])} "
            f"per layer while running, but only {human(host)} host"
            + ("" if on_cpu else f" / {human(device)} GPU")
            + " memory is free. Capture fewer heads (heads=[(layer, head), ...]), a few query rows (rows=[...]), "
            "a smaller batch (batch_size=...), or streamed statistics that never store N x N: "
            "workbench.patterns.capture_stats(...)"
        )


def query_rows(rows, n_tokens: int) -> torch.Tensor:
    """``rows`` (query positions) as a 1-D long tensor, each a whole number in 0..n_tokens-1; InputError otherwise."""
    values = rows.reshape(-1).tolist() if hasattr(rows, "reshape") else ([rows] if isinstance(rows, int) else list(rows))
    if not values:
        raise InputError("rows=[] selects no query position: give at least one position, or rows=None for all")
    values = [whole_number(r, "a query row") for r in values]
    if min(values) < 0 or max(values) >= n_tokens:
        raise InputError(f"rows must lie in 0..{n_tokens - 1} (the prompt has {n_tokens} tokens), got {values}")
    return torch.tensor(values, dtype=torch.long)


@torch.no_grad()
def capture(subject, inputs, *, heads=None, layers=None, patterns: bool = True, z: bool = False,
            logits: bool = False, rows=None, batch_size: int | None = None, extra_hooks=()) -> Capture:
    """Run ``inputs`` through ``subject`` and return exact patterns of the chosen heads (and z / logits if asked).

    ``rows`` keeps only those query positions of each pattern. ``extra_hooks`` (e.g. interventions)
    are active during the same forward passes, so the patterns reflect them.
    """
    if batch_size is not None:
        batch_size = positive_int(batch_size, "batch_size (sequences per forward pass)")
    batch = subject.as_batch(inputs)
    ids = batch["input_ids"]
    selection = select_heads(subject, heads, layers)
    rows_t = None if rows is None else query_rows(rows, ids.shape[1])
    if patterns:
        need = predict_capture_bytes(subject, selection, ids.shape[0], ids.shape[1],
                                     None if rows_t is None else len(rows_t), batch_size)
        _check_fits(subject, need, ids.shape[0], ids.shape[1])
    step = batch_size or ids.shape[0]
    recorder = PatternRecorder(selection, rows_t) if patterns else None
    zrec = ZRecorder(selection) if z else None
    hooks = [h for h in (recorder, zrec) if h is not None] + list(extra_hooks)
    out_logits = []
    with hooks_active(*hooks):
        for start in range(0, ids.shape[0], step):
            part = {k: v[start:start + step] for k, v in batch.items()}
            out = subject.model(**part, use_cache=False)
            if logits:
                out_logits.append(out.logits.float().cpu())
    mask = batch.get("attention_mask")
    result = Capture(input_ids=ids.cpu(), attention_mask=None if mask is None else mask.cpu(),
                     heads=selection, rows=rows_t)
    if recorder:
        result.patterns = {layer: torch.cat(parts) for layer, parts in recorder.patterns.items()}
    if zrec:
        result.z = {layer: torch.cat(parts) for layer, parts in zrec.z.items()}
    if logits:
        result.logits = torch.cat(out_logits)
    return result

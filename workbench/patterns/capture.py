"""The one capture entry point: exact attention patterns (and head outputs, logits) for a batch.

``capture`` predicts the peak memory first (``predict_capture``: everything alive at the peak, see
``patterns.memory``), runs the batch in the largest steps that fit, and refuses, with the numbers and the
alternative, when even one row would not fit; for long contexts use streamed statistics (``capture_stats``).
With ``reduce=`` each layer's patterns are reduced as they are computed and never kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch

from ..errors import CaptureMemoryError, InputError
from ..inputs import as_heads, positive_int, whole_number
from ..models.attention import AttentionCall, AttentionHook, hooks_active
from .memory import (FLOAT32, Budget, ModelDims, Prediction, exact_layer_bytes, forward_peak, largest_step,
                     pattern_bytes, steady_allocator)

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


class StepRows:
    """Per-layer tensors of a batch run in steps: each step's rows go into one (batch, ...) tensor, never concatenated.

    Set ``start`` to the step's first row before each forward pass. A step that is the whole batch is kept as is.
    """

    def __init__(self, batch: int | None = None):
        self.batch = batch
        self.start = 0
        self.data: dict[int, torch.Tensor] = {}

    def put(self, layer: int, value: torch.Tensor) -> None:
        total = self.batch or value.shape[0]
        if value.shape[0] == total:
            self.data[layer] = value
            return
        if layer not in self.data:
            self.data[layer] = value.new_empty((total, *value.shape[1:]))
        self.data[layer][self.start:self.start + value.shape[0]] = value


class PatternRecorder(AttentionHook):
    """Keeps exact post-softmax patterns of the selected heads (float32, on the CPU): ``patterns[layer]`` (B, h, Nq, Nk)."""

    def __init__(self, selection: HeadSel, rows: torch.Tensor | None = None, batch: int | None = None):
        self.selection = selection
        self.layers = frozenset(selection)
        self.rows = rows
        self.kept = StepRows(batch)
        self.patterns = self.kept.data

    def pattern_heads(self, call: AttentionCall) -> list[int]:
        return self.selection[call.layer]

    def on_pattern(self, call, heads, pattern):
        if self.rows is not None:
            pattern = pattern[:, :, self.rows.to(pattern.device)]
        self.kept.put(call.layer, pattern.detach().to("cpu", torch.float32))


class PatternReducer(AttentionHook):
    """Reduces each selected layer's exact patterns (B, h, Nq, Nk) with ``reduce(layer, pattern)`` as they are
    computed, keeping only the results: ``results[layer]`` (per-row results of several steps stacked along dim 0)."""

    def __init__(self, selection: HeadSel, reduce: Callable[[int, torch.Tensor], torch.Tensor], batch: int | None = None):
        self.selection = selection
        self.layers = frozenset(selection)
        self.reduce = reduce
        self.kept = StepRows(batch)
        self.results = self.kept.data

    def pattern_heads(self, call: AttentionCall) -> list[int]:
        return self.selection[call.layer]

    def on_pattern(self, call, heads, pattern):
        self.kept.put(call.layer, self.reduce(call.layer, pattern))


class ZRecorder(AttentionHook):
    """Keeps each selected layer's per-head outputs z (B, N, H, D) before o_proj, as float32 on the CPU: ``z[layer]``."""

    def __init__(self, layers: Iterable[int], batch: int | None = None):
        self.layers = frozenset(layers)
        self.kept = StepRows(batch)
        self.z = self.kept.data

    def on_z(self, call, z):
        self.kept.put(call.layer, z.detach().to("cpu", torch.float32))


@dataclass
class Capture:
    """Captured tensors for one batch. ``patterns[layer]``: (B, len(heads[layer]), Nq, Nk) float32.

    ``reduced[layer]``: what ``reduce`` returned for that layer; ``memory``: the prediction and the step used.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor | None
    heads: HeadSel
    patterns: dict[int, torch.Tensor] = field(default_factory=dict)
    z: dict[int, torch.Tensor] = field(default_factory=dict)
    logits: torch.Tensor | None = None
    rows: torch.Tensor | None = None
    reduced: dict[int, torch.Tensor] = field(default_factory=dict)
    memory: dict = field(default_factory=dict)

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


def edits_scores(hooks) -> bool:
    """Whether any of ``hooks`` overrides ``edit_scores`` (its layers then compute every head eagerly in float32)."""
    return any(type(h).edit_scores is not AttentionHook.edit_scores for h in hooks)


def predict_capture(dims: ModelDims, selection: HeadSel, batch: int, n_tokens: int, *, step: int | None = None,
                    device_type: str = "cpu", patterns: bool = True, n_rows: int | None = None, z: bool = False,
                    logits: bool = False, reduce_copies: float | None = None, reduce_bytes: int = 0,
                    padded: bool = False, eager: bool = False) -> Prediction:
    """Peak memory of ``capture`` on ``batch`` x ``n_tokens`` run in steps of ``step`` rows (default: all at once).

    Kept for the whole batch: the selected heads' patterns (``n_rows`` query rows each, default all), z of the
    selected layers, logits. Per step: the model's activations and the widest captured layer's exact patterns;
    ``reduce_copies`` (with ``reduce=``): pattern-sized float32 temporaries the reduction makes per layer (patterns
    are then not kept), ``reduce_bytes`` what it keeps; ``eager``: hooks edit scores (every head computed in full).
    """
    step = min(step or batch, batch)
    n, n_sel = n_tokens, sum(len(hs) for hs in selection.values())
    widest = max(len(hs) for hs in selection.values())
    kept = reduce_bytes if reduce_copies is not None else 0
    if patterns and reduce_copies is None:
        kept += pattern_bytes(batch, n_sel, n_rows or n, n)
    if z:
        kept += len(selection) * batch * n * dims.q_width * FLOAT32
    if logits and (device_type != "cpu" or step < batch):  # else the model's logits tensor is the kept one
        kept += batch * n * dims.vocab * FLOAT32
    extra = 0
    if patterns:
        extra = exact_layer_bytes(step, widest, n, n, dims.d_head)
        layer = pattern_bytes(step, widest, n, n)
        if reduce_copies is not None:
            extra += int(reduce_copies * layer) + 3 * step * n * n  # + the reduction's bool masks
        elif device_type == "cpu" and n_rows is None and step == batch:
            extra -= layer  # the computed patterns are the kept ones (no copy)
    if eager:
        extra += 3 * pattern_bytes(step, dims.n_heads, n, n) + step * n * dims.q_width * FLOAT32
    return forward_peak(dims, step, n, device_type=device_type, n_logits=n if logits else 1, kept=kept,
                        layer_extra=extra, padded=padded)


def too_big(what: str, prediction: Prediction, budget: Budget, advice: str) -> CaptureMemoryError:
    """The error for a pass whose predicted peak does not fit the budget: the numbers and what to do instead."""
    return CaptureMemoryError(f"{what} needs {prediction.describe()} at its peak, but the budget is "
                              f"{budget.describe()}. {advice}")


def memory_plan(mode: str, step: int, batch: int, prediction: Prediction, budget: Budget, why: str) -> dict:
    """What a pass chose and why, for metadata: mode, batch step, predicted peak, budget, a one-line reason."""
    split = f" in steps of {step} of {batch} rows" if step < batch else ""
    return {"mode": mode, "batch_size": step, "predicted_peak_bytes": prediction.peak,
            "predicted_host_bytes": prediction.host, "predicted_device_bytes": prediction.device,
            "reason": f"{mode}{split} ({why}): predicted peak {prediction.describe()}; budget {budget.describe()}",
            **budget.as_dict()}


ADVICE = ("Capture fewer heads (heads=[(layer, head), ...]), a few query rows (rows=[...]), or streamed "
          "statistics that never store N x N: workbench.patterns.capture_stats(...)")


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
            logits: bool = False, rows=None, batch_size: int | None = None, extra_hooks=(),
            reduce: Callable[[int, torch.Tensor], torch.Tensor] | None = None, reduce_copies: float = 1.0,
            budget: Budget | None = None) -> Capture:
    """Run ``inputs`` through ``subject`` and return exact patterns of the chosen heads (and z / logits if asked).

    ``rows`` keeps only those query positions of each pattern. ``extra_hooks`` (e.g. interventions)
    are active during the same forward passes, so the patterns reflect them. ``batch_size`` (default: the
    largest step whose predicted peak fits ``budget``, by default half the free memory) runs the batch in steps.
    ``reduce(layer, pattern)`` replaces each layer's patterns by its result (``Capture.reduced``); its results
    must be per row (dim 0) when the batch runs in several steps; ``reduce_copies``: its pattern-sized temporaries.
    """
    if batch_size is not None:
        batch_size = positive_int(batch_size, "batch_size (sequences per forward pass)")
    batch = subject.as_batch(inputs)
    ids = batch["input_ids"]
    n_batch, n_tokens = ids.shape
    selection = select_heads(subject, heads, layers)
    rows_t = None if rows is None else query_rows(rows, n_tokens)
    steady_allocator()
    dims, budget = ModelDims.of(subject), budget or Budget.now(subject.device)

    def predict(step: int) -> Prediction:
        return predict_capture(dims, selection, n_batch, n_tokens, step=step, device_type=subject.device.type,
                               patterns=patterns, n_rows=None if rows_t is None else len(rows_t), z=z, logits=logits,
                               reduce_copies=reduce_copies if reduce else None, padded="attention_mask" in batch,
                               eager=edits_scores(extra_hooks))

    step = batch_size or largest_step(predict, n_batch, budget)
    what = (f"capturing exact patterns of {sum(map(len, selection.values()))} heads for {n_batch} x {n_tokens} tokens"
            if patterns else f"a forward pass of {n_batch} x {n_tokens} tokens")
    if step == 0 or not budget.allows(predict(step)):
        raise too_big(what + ("" if step in (0, 1) else f" in steps of {step} rows"), predict(max(step, 1)), budget,
                      ADVICE if patterns else "Use a smaller batch or shorter inputs.")
    step = min(step, n_batch)
    total = n_batch if step < n_batch else None  # several steps: rows are placed into whole-batch tensors
    recorder = None
    if patterns:
        recorder = PatternReducer(selection, reduce, total) if reduce else PatternRecorder(selection, rows_t, total)
    zrec = ZRecorder(selection, total) if z else None
    logit_rows = StepRows(total)
    hooks = [h for h in (recorder, zrec) if h is not None]
    kept = [h.kept for h in hooks] + [logit_rows]
    with hooks_active(*hooks, *extra_hooks):
        for start in range(0, n_batch, step):
            for rows_of in kept:
                rows_of.start = start
            part = {k: v[start:start + step] for k, v in batch.items()}
            out = subject.model(**part, use_cache=False, **subject.logits_kwargs(logits))
            if logits:
                logit_rows.put(0, out.logits.float().cpu())
            del out
    mask = batch.get("attention_mask")
    result = Capture(input_ids=ids.cpu(), attention_mask=None if mask is None else mask.cpu(), heads=selection,
                     rows=rows_t, memory=memory_plan("exact", step, n_batch, predict(step), budget,
                                                     "asked for" if batch_size else "fits"))
    if isinstance(recorder, PatternRecorder):
        result.patterns = recorder.patterns
    elif recorder is not None:
        result.reduced = recorder.results
    if zrec:
        result.z = zrec.z
    if logits:
        result.logits = logit_rows.data[0]
    return result

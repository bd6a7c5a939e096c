"""Evaluate many head ablations fast: prefix reuse plus several ablations per forward pass.

For a cell (a head, a pair, a group) whose first head sits in layer ``s``, layers ``0..s-1`` are the
same as in the clean run, so the clean residual stream entering ``s`` is computed once per prompt chunk
and only layers ``s..`` run per cell (``residual.py``). Cells sharing ``s`` are stacked along the batch
axis: copy ``j`` of the prompts carries cell ``j``'s specs (``rows=``), as many copies as fit the
memory budget. Only the logits at scored positions are computed (HF ``logits_to_keep``).
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch

from ..errors import InputError
from ..inputs import parse_head
from ..interventions import apply
from ..patterns.memory import FLOAT32, available_bytes
from ..tasks.base import TaskBatch, gather_targets
from ..tasks.metrics import Metric
from .ablations import Ablation
from .residual import embed, logits_from, residual

Head = tuple[int, int]
Cell = tuple[Head, ...]


def cell_name(heads: Sequence[Head]) -> str:
    """'L3H1' for one head, 'L3H1+L4H2' for several (sorted)."""
    return "+".join(f"L{layer}H{head}" for layer, head in sorted(heads))


def parse_heads(text: str) -> Cell:
    """'L3H1+L4H2' (or 'L3H1', '3.1+4.2') -> ((3, 1), (4, 2)); heads read by ``workbench.inputs.parse_head``."""
    return tuple(sorted({parse_head(part) for part in text.replace(" ", "").split("+")}))


@dataclass
class CellResult:
    heads: Cell
    values: dict[str, np.ndarray]  # metric -> per-prompt values
    seconds: float


def rows_budget(subject, batch: TaskBatch, n_keep: int, max_rows: int | None = None) -> int:
    """How many (copy x prompt) rows one forward may carry: a memory estimate per row against the free memory."""
    if max_rows is not None:
        return max(1, int(max_rows))
    cfg = subject.model.config
    d_ff = getattr(cfg, "intermediate_size", None) or getattr(cfg, "ffn_dim", None) or 4 * subject.d_model
    n = batch.n_tokens
    per_row = FLOAT32 * (n * (24 * subject.d_model + 6 * d_ff + 2 * subject.n_heads * n) + 3 * n_keep * subject.vocab_size)
    free = available_bytes(subject.device)
    budget = 0.3 * free if subject.device.type == "cuda" else min(2 << 30, 0.25 * free)
    return int(max(1, min(4096, budget // per_row)))


def _chunks(n: int, size: int) -> list[range]:
    return [range(i, min(i + size, n)) for i in range(0, n, size)]


@torch.no_grad()
def baseline_values(subject, batch: TaskBatch, metrics: Sequence[Metric], chunk: int | None = None) -> dict[str, np.ndarray]:
    """Per-prompt metric values with no intervention (the reference every cell's effect is measured against)."""
    keep = batch.keep_positions()
    chunk = chunk or rows_budget(subject, batch, len(keep))
    out = {m.name: [] for m in metrics}
    for rows in _chunks(len(batch), chunk):
        part = batch.select(rows, trim=False)
        inputs = part.model_inputs(subject.device)
        mask = inputs["attention_mask"]
        logits = logits_from(subject, embed(subject, inputs["input_ids"], mask), mask, 0, keep)
        target = gather_targets(logits, part, keep)
        for m in metrics:
            out[m.name].append(m(target, part).detach().double().cpu())
    return {k: torch.cat(v).numpy() for k, v in out.items()}


def cells_per_forward(subject, batch: TaskBatch, max_rows: int | None = None) -> tuple[int, int]:
    """(prompts per chunk, cells per forward): how the row budget is split between the batch and cell copies."""
    budget = rows_budget(subject, batch, len(batch.keep_positions()), max_rows)
    per_chunk = min(len(batch), budget)
    return per_chunk, max(1, budget // per_chunk)


def first_layer(cell: Cell) -> int:
    """The lowest layer a cell touches: layers below it run unchanged (prefix reuse)."""
    return min(layer for layer, _ in cell)


class CellEvaluator:
    """Evaluates cells of one batch and ablation on one subject, call after call.

    The ablation is prepared once (for ``layers``, default: those of the first call's cells), and the
    clean residual stream is kept between calls: calls whose cells start at or after the layer reached
    so far (cells given in order of first layer) continue from it, as one call with all the cells would.
    """

    def __init__(self, subject, batch: TaskBatch, ablation: Ablation, metrics: Sequence[Metric], *,
                 max_rows: int | None = None, reuse_prefix: bool = True, layers=None):
        self.subject, self.batch, self.ablation, self.metrics = subject, batch, ablation, list(metrics)
        self.reuse_prefix = reuse_prefix
        self.layers = None if layers is None else {int(layer) for layer in layers}
        self.keep = batch.keep_positions()
        self.per_chunk, self.copies = cells_per_forward(subject, batch, max_rows)
        self.chunks = _chunks(len(batch), self.per_chunk)
        self._prepared = False
        self._parts = self._inputs = self._hidden = None
        self._current = 0

    def _start(self, cell: Cell) -> int:
        return first_layer(cell) if self.reuse_prefix else 0

    def _prepare(self, cells: Sequence[Cell]) -> None:
        if self.layers is None:
            self.layers = {layer for cell in cells for layer, _ in cell}
        self.ablation.prepare(self.subject, self.batch, self.layers, self.per_chunk)
        self._parts = [self.batch.select(rows, trim=False) for rows in self.chunks]
        self._inputs = [p.model_inputs(self.subject.device) for p in self._parts]
        self._prepared = True

    def __call__(self, cells: Sequence[Cell]) -> Iterator[CellResult]:
        """Yield each cell's per-prompt metric values, cells sharing a first layer batched together."""
        if not cells:
            return
        subject = self.subject
        for cell in cells:
            for layer, head in cell:
                subject.check_head(layer, head)
        if not self._prepared:
            self._prepare(cells)
        missing = {layer for cell in cells for layer, _ in cell} - self.layers
        if missing:
            raise InputError(f"layers {sorted(missing)} were not prepared for this ablation: give them in layers=")
        ordered = sorted(cells, key=self._start)
        if self._hidden is None or self._start(ordered[0]) < self._current:
            with torch.no_grad():
                self._hidden = [embed(subject, x["input_ids"], x["attention_mask"]) for x in self._inputs]
            self._current = 0
        for start, group in itertools.groupby(ordered, key=self._start):
            group = list(group)
            with torch.no_grad():
                self._hidden = [residual(subject, h, x["attention_mask"], self._current, start)
                                for h, x in zip(self._hidden, self._inputs)]
            self._current = start
            for i in range(0, len(group), self.copies):
                yield from self._forward(group[i:i + self.copies], start)

    def _forward(self, todo: list[Cell], start: int) -> Iterator[CellResult]:
        began = time.perf_counter()
        values = {m.name: [[] for _ in todo] for m in self.metrics}
        for rows, part, h, x in zip(self.chunks, self._parts, self._hidden, self._inputs):
            b, n = len(rows), len(todo)
            prompts = torch.as_tensor(list(rows))
            specs = [s for j, cell in enumerate(todo) for s in self.ablation.specs(cell, range(j * b, (j + 1) * b), prompts)]
            with torch.no_grad(), apply(self.subject, *specs):
                logits = logits_from(self.subject, h.repeat(n, 1, 1), x["attention_mask"].repeat(n, 1), start, self.keep)
            tiled = part.tile(n)
            target = gather_targets(logits, tiled, self.keep)
            for m in self.metrics:
                v = m(target, tiled).detach().double().cpu().view(n, b)
                for j in range(n):
                    values[m.name][j].append(v[j])
        seconds = (time.perf_counter() - began) / len(todo)
        for j, cell in enumerate(todo):
            yield CellResult(cell, {k: torch.cat(v[j]).numpy() for k, v in values.items()}, seconds)


def evaluate_cells(subject, batch: TaskBatch, cells: Sequence[Cell], ablation: Ablation, metrics: Sequence[Metric],
                   *, max_rows: int | None = None, reuse_prefix: bool = True) -> Iterator[CellResult]:
    """Yield each cell's per-prompt metric values under ``ablation``, cells sharing a first layer batched together."""
    if not cells:
        return iter(())
    return CellEvaluator(subject, batch, ablation, metrics, max_rows=max_rows, reuse_prefix=reuse_prefix)(cells)

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
    """'L3H1+L4H2' (or 'L3H1') -> ((3, 1), (4, 2))."""
    out = []
    for part in text.replace(" ", "").split("+"):
        try:
            layer, head = part.upper().lstrip("L").split("H")
            out.append((int(layer), int(head)))
        except ValueError:
            raise InputError(f"cannot read head {part!r}: write heads as L<layer>H<head>, e.g. L3H1 or L3H1+L4H2") from None
    return tuple(sorted(set(out)))


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


def evaluate_cells(subject, batch: TaskBatch, cells: Sequence[Cell], ablation: Ablation, metrics: Sequence[Metric],
                   *, max_rows: int | None = None, reuse_prefix: bool = True) -> Iterator[CellResult]:
    """Yield each cell's per-prompt metric values under ``ablation``, cells sharing a first layer batched together."""
    if not cells:
        return
    for cell in cells:
        for layer, head in cell:
            subject.check_head(layer, head)
    keep = batch.keep_positions()
    budget = rows_budget(subject, batch, len(keep), max_rows)
    per_chunk = min(len(batch), budget)
    copies = max(1, budget // per_chunk)
    chunks = _chunks(len(batch), per_chunk)
    ablation.prepare(subject, batch, {layer for cell in cells for layer, _ in cell}, per_chunk)
    parts = [batch.select(rows, trim=False) for rows in chunks]
    inputs = [p.model_inputs(subject.device) for p in parts]
    with torch.no_grad():
        hidden = [embed(subject, x["input_ids"], x["attention_mask"]) for x in inputs]
    current = 0
    first_layer = lambda cell: min(layer for layer, _ in cell) if reuse_prefix else 0  # noqa: E731
    for start, group in itertools.groupby(sorted(cells, key=first_layer), key=first_layer):
        group = list(group)
        with torch.no_grad():
            hidden = [residual(subject, h, x["attention_mask"], current, start) for h, x in zip(hidden, inputs)]
        current = start
        for i in range(0, len(group), copies):
            todo = group[i:i + copies]
            began = time.perf_counter()
            values = {m.name: [[] for _ in todo] for m in metrics}
            for rows, part, h, x in zip(chunks, parts, hidden, inputs):
                b, n = len(rows), len(todo)
                prompts = torch.as_tensor(list(rows))
                specs = [s for j, cell in enumerate(todo) for s in ablation.specs(cell, range(j * b, (j + 1) * b), prompts)]
                with torch.no_grad(), apply(subject, *specs):
                    logits = logits_from(subject, h.repeat(n, 1, 1), x["attention_mask"].repeat(n, 1), start, keep)
                tiled = part.tile(n)
                target = gather_targets(logits, tiled, keep)
                for m in metrics:
                    v = m(target, tiled).detach().double().cpu().view(n, b)
                    for j in range(n):
                        values[m.name][j].append(v[j])
            seconds = (time.perf_counter() - began) / len(todo)
            for j, cell in enumerate(todo):
                yield CellResult(cell, {k: torch.cat(v[j]).numpy() for k, v in values.items()}, seconds)

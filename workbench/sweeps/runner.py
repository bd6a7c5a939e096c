"""The sweep runner: cells x a task's prompts x metrics, each finished cell written at once as a Parquet part.

Layout of a sweep folder (what ``load_sweep`` and the sweep viewer read)::

    DIR/sweep.json                      the manifest: {"settings": {model, task: {name, settings, n_total,
                                        n_kept, criterion, default_metric}, intervention: {name, definition},
                                        metrics, n_cells, cells_sha1, seed, reuse_prefix}, "baseline":
                                        {metric: mean value with no intervention}, "model_facts", "versions",
                                        "cells": [cell names] (None beyond 5000), "status": "running" |
                                        "complete", "started", "finished"}
    DIR/parts/part-<intervention>-<cell>.parquet
                                        one file per finished cell, one row per metric, columns ``COLUMNS``:
                                        cell ("zero:L3H1"), layer, head (-1 for multi-head cells), heads
                                        ("L3H1" or "L3H1+L4H2"), intervention, metric, value (mean over the
                                        prompts), baseline, effect (= value - baseline), sem (standard error
                                        of the per-prompt values), n_prompts, seconds (compute per cell)
    DIR/sweep.html                      the report (``workbench.sweeps.report.sweep_report``), if written

A part exists only once its cell is complete (temp file + rename), so a sweep killed at any point
(even ``kill -9``) resumes with ``resume=True`` by skipping the cells whose part exists: nothing is
lost and nothing is written twice. ``load_sweep`` reads a finished or still-running sweep.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from ..errors import InputError
from ..io import atomic_write, atomic_write_json
from ..progress import progress
from ..tasks.base import Task
from ..tasks.metrics import get_metric
from .ablations import get_ablation
from .engine import Cell, baseline_values, cell_name, evaluate_cells

COLUMNS = ["cell", "layer", "head", "heads", "intervention", "metric", "value", "baseline", "effect", "sem",
           "n_prompts", "seconds"]


# ---------------------------------------------------------------------------------- cells
def single_heads(subject, heads=None) -> list[Cell]:
    """One cell per head (every head of the model by default)."""
    heads = heads if heads is not None else [(l, h) for l in range(subject.n_layers) for h in range(subject.n_heads)]
    return [((int(l), int(h)),) for l, h in heads]


def layer_groups(subject, layers=None) -> list[Cell]:
    """One cell per layer: all its query heads ablated together."""
    layers = range(subject.n_layers) if layers is None else layers
    return [tuple((int(l), h) for h in range(subject.n_heads)) for l in layers]


def kv_groups(subject, layers=None) -> list[Cell]:
    """One cell per key/value group: the query heads that share a KV head (grouped-query models)."""
    layers = range(subject.n_layers) if layers is None else layers
    return [tuple((int(l), int(h)) for h in np.flatnonzero(subject.kv_group == g))
            for l in layers for g in range(subject.n_kv_heads)]


def head_pairs(heads) -> list[Cell]:
    """Every unordered pair of the given heads."""
    heads = sorted({(int(l), int(h)) for l, h in heads})
    return [(a, b) for i, a in enumerate(heads) for b in heads[i + 1:]]


# ----------------------------------------------------------------------------------- files
def part_path(out: Path, intervention: str, cell: Cell) -> Path:
    """Where a cell's finished rows live (a short hash for very long head lists)."""
    name = f"{intervention}-{cell_name(cell)}"
    if len(name) > 120:
        name = f"{intervention}-{len(cell)}heads-{hashlib.sha1(name.encode()).hexdigest()[:16]}"
    return out / "parts" / f"part-{name}.parquet"


def load_sweep(out) -> pd.DataFrame:
    """Every finished row of a sweep folder (possibly still running), sorted by layer and head; settings in ``.attrs['sweep']``."""
    out = Path(out)
    if not (out / "sweep.json").is_file() and not (out / "parts").is_dir():
        raise InputError(f"{out} holds no sweep (no sweep.json): run `workbench sweep --out {out}` first")
    frames = []
    for path in sorted((out / "parts").glob("part-*.parquet")):
        try:
            frames.append(pd.read_parquet(path))
        except FileNotFoundError:  # replaced between listing and reading
            continue
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame({c: [] for c in COLUMNS})
    df = df.drop_duplicates(["cell", "metric"]).sort_values(["layer", "head", "heads", "metric"], ignore_index=True)
    if (out / "sweep.json").is_file():
        df.attrs["sweep"] = json.loads((out / "sweep.json").read_text())
    return df


def _versions() -> dict:
    import transformers

    from .. import __version__

    return {"workbench": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}


def _rows(cell: Cell, intervention: str, result, base: dict, n_prompts: int) -> pd.DataFrame:
    layers = {l for l, _ in cell}
    rows = []
    for metric, values in result.values.items():
        value = float(np.mean(values))
        sem = float(np.std(values, ddof=1) / np.sqrt(len(values))) if len(values) > 1 else float("nan")
        rows.append({"cell": f"{intervention}:{cell_name(cell)}", "layer": next(iter(layers)) if len(layers) == 1 else -1,
                     "head": cell[0][1] if len(cell) == 1 else -1, "heads": cell_name(cell),
                     "intervention": intervention, "metric": metric, "value": value, "baseline": base[metric],
                     "effect": value - base[metric], "sem": sem, "n_prompts": n_prompts, "seconds": result.seconds})
    df = pd.DataFrame(rows, columns=COLUMNS)
    return df.astype({"layer": "int64", "head": "int64", "n_prompts": "int64"})


# ---------------------------------------------------------------------------------- runner
def run_sweep(subject, task: Task, out, *, intervention="zero", metrics: Sequence | None = None,
              cells: Sequence[Cell] | None = None, resume: bool = False, seed: int = 0,
              max_rows: int | None = None, reuse_prefix: bool = True) -> pd.DataFrame:
    """Ablate each cell on the task's kept prompts and record mean metric, baseline and effect; returns ``load_sweep(out)``."""
    out = Path(out)
    ablation = get_ablation(intervention, seed)
    metrics = [get_metric(m) for m in (metrics or [task.default_metric])]
    if len({m.name for m in metrics}) != len(metrics):
        raise InputError("metric names must be distinct")
    cells = [tuple(sorted(set(c))) for c in (cells if cells is not None else single_heads(subject))]
    if not cells:
        raise InputError("no cells to sweep: give heads, groups or pairs")
    names = [cell_name(c) for c in cells]
    if len(set(names)) != len(names):
        raise InputError("the same cell is listed twice")
    for cell in cells:
        for layer, head in cell:
            subject.check_head(layer, head)
    settings = {"model": subject.name, "task": task.describe(), "intervention": ablation.describe(),
                "metrics": [m.name for m in metrics], "n_cells": len(cells),
                "cells_sha1": hashlib.sha1("\n".join(names).encode()).hexdigest(), "seed": seed,
                "reuse_prefix": reuse_prefix}
    meta_path = out / "sweep.json"
    if meta_path.is_file():
        previous = json.loads(meta_path.read_text())
        if not resume:
            raise InputError(f"{out} already holds a sweep: pass --resume (resume=True) to continue it, or choose another --out")
        changed = [k for k in settings if previous.get("settings", {}).get(k) != json.loads(json.dumps(settings[k]))]
        if changed:
            raise InputError(f"{out} holds a sweep with different {', '.join(changed)}: resume it with the same "
                             "settings, or choose another --out")
        base, started = previous["baseline"], previous.get("started")
    else:
        started = None
        base = {k: float(np.mean(v)) for k, v in baseline_values(subject, task.batch, metrics, max_rows).items()}
    meta = {"settings": settings, "baseline": base, "model_facts": subject.facts(), "versions": _versions(),
            "cells": names if len(names) <= 5000 else None, "status": "running",
            "started": started or time.strftime("%Y-%m-%dT%H:%M:%S")}
    atomic_write_json(meta_path, meta)
    (out / "parts").mkdir(parents=True, exist_ok=True)
    for stale in (out / "parts").glob(".part-*.tmp"):  # a temp file left by a killed writer
        stale.unlink(missing_ok=True)
    todo = [c for c in cells if not part_path(out, ablation.name, c).is_file()]
    bar = progress(total=len(cells), initial=len(cells) - len(todo), unit="cell",
                   desc=f"{ablation.name} sweep of {subject.name} on {task.name}")
    try:
        for result in evaluate_cells(subject, task.batch, todo, ablation, metrics, max_rows=max_rows,
                                     reuse_prefix=reuse_prefix):
            rows = _rows(result.heads, ablation.name, result, base, len(task.batch))
            atomic_write(part_path(out, ablation.name, result.heads), lambda p: rows.to_parquet(p, index=False))
            bar.update(1)
    finally:
        bar.close()
    meta.update(status="complete", finished=time.strftime("%Y-%m-%dT%H:%M:%S"))
    atomic_write_json(meta_path, meta)
    return load_sweep(out)

"""The sweep runner: cells x a task's prompts x metrics, finished cells written in chunks as Parquet parts.

Layout of a sweep folder (a ``workbench.results`` folder; what ``load_sweep`` and the sweep viewer read)::

    DIR/sweep.json      the manifest: {"format": 2, "kind": "sweep", "settings": {model, task: {name, settings,
                        n_total, n_kept, criterion, default_metric}, prompts_sha1, intervention: {name,
                        definition}, metrics, n_cells, cells_sha1, seed, reuse_prefix, and for a screened
                        sweep screen: {method, fixes, verify}}, "settings_hash",
                        "baseline": {metric: mean value with no intervention}, "baseline_prompt_values":
                        {metric: [per-prompt values]}, "model_facts", "versions", "cells": [cell names]
                        (None beyond 5000), "status": "running" | "complete", "started", "finished",
                        screened sweeps: "screen": {method, seconds, top, calibration} (verified cell names)}
    DIR/parts/part-000001.parquet ...
                        a chunk of finished cells each, one row per (cell, metric), columns ``COLUMNS``:
                        cell ("zero:L3H1"; estimates "zero:L3H1@atp+qk"), layer, head (-1 for multi-head
                        cells), heads ("L3H1" or "L3H1+L4H2"), intervention, method ("exact", or the
                        screen's estimator: atp, atp+qk, atp+graddrop, atp*), metric, value (mean over
                        the prompts), baseline, effect (= value - baseline), sem (standard error of the
                        per-prompt values), n_prompts, seconds (compute per cell), estimate (the screen's
                        estimated effect: on estimate rows and on the exact rows of verified cells, else
                        NaN), verify ("top" / "calibration" on the exact rows of a screened sweep, else
                        ""), prompt_values (the per-prompt values, in the order of the task's kept
                        prompts), plus settings_hash (the manifest's). Folders written before the
                        method / estimate / verify columns read as method "exact", NaN, "".
    DIR/parts/damaged/  parts that could not be read, set aside by a resume (their cells were recomputed)
    DIR/.lock           held by the process writing the folder (pid, host, command)
    DIR/sweep.html      the report (``workbench.sweeps.report.sweep_report``), if written

Computing is separate from writing: ``ChunkWorker(subject, plan)(cells)`` turns a chunk of cells into
finished rows (a pure function of the subject, the plan and the cells); the driver (``run_sweep``)
hands chunks to an executor (``workbench.executors``: in this process, or Ray actors that load the model
themselves) and writes each chunk's rows as one part, so rows land identically whoever computed them. A part exists only once complete
(temp file + rename), so a sweep killed at any point (even ``kill -9``) resumes with ``resume=True``
by skipping the cells of its intact parts: nothing is lost and nothing is written twice. Sweeps
written by an older workbench (one part per cell, no settings hash) are read by ``load_sweep`` but
not continued.
"""

from __future__ import annotations

import functools
import hashlib
import math
import platform
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from ..errors import InputError
from ..executors import Executor, get_executor
from ..progress import progress
from ..results import ResultFolder, data_digest, now
from ..tasks.base import Task, TaskBatch
from ..tasks.metrics import Metric, get_metric
from .ablations import Ablation, get_ablation
from .engine import Cell, CellEvaluator, CellResult, baseline_values, cell_name, cells_per_forward, first_layer
from .screen import DEFAULT_FIXES, METHODS, HeadEstimates, check_fixes, method_name, screen_heads, verification_cells

COLUMNS = ["cell", "layer", "head", "heads", "intervention", "method", "metric", "value", "baseline", "effect", "sem",
           "n_prompts", "seconds", "estimate", "verify", "prompt_values"]
FILL = {"method": "exact", "estimate": float("nan"), "verify": ""}  # columns that older folders lack
MANIFEST = "sweep.json"
MAX_PARTS = 256  # default chunk: at least 1/256 of the cells, so even 500k cells make few files
LEGACY = ("this sweep was written by an older workbench (one part per cell, no settings hash): load_sweep and "
          "SweepViewer still read it, but it cannot be continued")


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
def sweep_folder(out) -> ResultFolder:
    """The result folder of a sweep (manifest sweep.json, parts keyed by ``cell``)."""
    return ResultFolder(out, MANIFEST, kind="sweep", key="cell", legacy=LEGACY)


def load_sweep(out, prompt_values: bool = True, cache: dict | None = None) -> pd.DataFrame:
    """Every finished row of a sweep folder (possibly still running) made with its manifest's settings, sorted by layer and head; the manifest in ``.attrs['sweep']``.

    ``prompt_values=False`` leaves out the per-prompt values (faster); ``cache``: a dict kept between
    calls, so a poller re-reads only the parts written since its last call.
    """
    out = Path(out)
    folder = sweep_folder(out)
    if not folder.manifest_path.is_file() and not folder.parts.folder.is_dir():
        raise InputError(f"{out} holds no sweep (no {MANIFEST}): run `workbench sweep --out {out}` first")
    meta, table = folder.read(exclude=() if prompt_values else ("prompt_values",), cache=cache)
    if meta is not None and not folder.is_current(meta):
        df = _legacy_rows(folder, meta)
    elif table is not None:
        df = table.to_pandas()
    else:
        df = pd.DataFrame({c: [] for c in COLUMNS if prompt_values or c != "prompt_values"})
    for column, value in FILL.items():
        df[column] = df[column].fillna(value) if column in df else value
    df = df[[c for c in COLUMNS if c in df]].drop_duplicates(["cell", "metric"]).sort_values(["layer", "head", "heads", "metric"], ignore_index=True)
    if meta is not None:
        df.attrs["sweep"] = meta
    return df


def _legacy_rows(folder: ResultFolder, meta: dict) -> pd.DataFrame:
    """Rows of a format-1 sweep (one part per cell, no settings hash), limited to the manifest's cells when it lists them."""
    frames = []
    for path in folder.parts.paths():
        try:
            frames.append(pd.read_parquet(path))
        except FileNotFoundError:
            continue
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame({c: [] for c in COLUMNS[:-1]})
    return df[df["heads"].isin(meta["cells"])] if meta.get("cells") else df


def _versions() -> dict:
    import transformers

    from .. import __version__

    return {"workbench": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}


# ------------------------------------------------------------------------------ computing
@dataclass
class SweepPlan:
    """What every chunk of one sweep shares, all but the model: prompts, ablation, metrics, baselines, layers, batching."""

    batch: TaskBatch
    ablation: Ablation
    metrics: list[Metric]
    baseline: dict[str, float]
    layers: tuple[int, ...]
    max_rows: int | None = None
    reuse_prefix: bool = True


def cell_key(intervention: str, cell: Cell, method: str = "exact") -> str:
    """A row's ``cell`` (its key in the folder): 'zero:L3H1' for exact rows, 'zero:L3H1@atp+qk' for a screen's estimates."""
    key = f"{intervention}:{cell_name(cell)}"
    return key if method == "exact" else f"{key}@{method}"


def cell_rows(result, plan: SweepPlan, method: str = "exact") -> pd.DataFrame:
    """A finished cell's rows (one per metric, columns ``COLUMNS``) from its per-prompt values (exact, or a screen's ``method`` estimates)."""
    cell, name = result.heads, plan.ablation.name
    layers = {l for l, _ in cell}
    rows = []
    for metric, values in result.values.items():
        value = float(np.mean(values))
        sem = float(np.std(values, ddof=1) / np.sqrt(len(values))) if len(values) > 1 else float("nan")
        effect = value - plan.baseline[metric]
        rows.append({"cell": cell_key(name, cell, method), "layer": next(iter(layers)) if len(layers) == 1 else -1,
                     "head": cell[0][1] if len(cell) == 1 else -1, "heads": cell_name(cell), "intervention": name,
                     "method": method, "metric": metric, "value": value, "baseline": plan.baseline[metric],
                     "effect": effect, "sem": sem, "n_prompts": len(values), "seconds": result.seconds,
                     "estimate": float("nan") if method == "exact" else effect, "verify": "",
                     "prompt_values": np.asarray(values, dtype=np.float64)})
    return pd.DataFrame(rows, columns=COLUMNS).astype({"layer": "int64", "head": "int64", "n_prompts": "int64"})


def estimate_rows(estimates: HeadEstimates, cells: Sequence[Cell], plan: SweepPlan,
                  baseline_prompts: dict[str, np.ndarray]) -> pd.DataFrame:
    """A screen's rows (``COLUMNS``, method = its estimator) for ``cells``: per prompt, the baseline plus the estimated effect."""
    seconds = estimates.seconds / max(1, len(cells))
    frames = [cell_rows(CellResult(cell, {m.name: np.asarray(baseline_prompts[m.name]) + estimates.cell(cell, m.name)
                                          for m in plan.metrics}, seconds), plan, estimates.method)
              for cell in cells]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)


class ChunkWorker:
    """Computes chunks of one sweep's cells on one subject: ``worker(cells)`` -> their finished rows.

    The rows depend only on the subject, the plan and the cells; the worker keeps the prepared ablation
    and the clean residual stream between chunks (chunks in order of first layer continue the stream).
    """

    def __init__(self, subject, plan: SweepPlan):
        self.plan = plan
        self.evaluate = CellEvaluator(subject, plan.batch, plan.ablation, plan.metrics, max_rows=plan.max_rows,
                                      reuse_prefix=plan.reuse_prefix, layers=plan.layers)

    def __call__(self, cells: Sequence[Cell], on_cell: Callable[[int], object] | None = None) -> pd.DataFrame:
        """The finished rows (``COLUMNS``) of ``cells``; ``on_cell(1)`` after each cell (progress)."""
        frames = []
        for result in self.evaluate(cells):
            frames.append(cell_rows(result, self.plan))
            if on_cell is not None:
                on_cell(1)
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)


def plan_chunks(cells: Sequence[Cell], size: int, reuse_prefix: bool = True) -> list[list[Cell]]:
    """The cells in order of first layer (prefix reuse), cut into chunks of ``size``: the unit of computing and of a part."""
    ordered = sorted(cells, key=first_layer) if reuse_prefix else list(cells)
    size = max(1, int(size))
    return [ordered[i:i + size] for i in range(0, len(ordered), size)]


def default_chunk(n_cells: int, copies: int) -> int:
    """Cells per chunk: one forward's worth of cells (``copies``), and at least 1/MAX_PARTS of the sweep."""
    return max(1, copies, math.ceil(n_cells / MAX_PARTS))


# ---------------------------------------------------------------------------------- runner
def run_sweep(subject, task: Task, out, *, intervention="zero", metrics: Sequence | None = None,
              cells: Sequence[Cell] | None = None, resume: bool = False, seed: int = 0,
              max_rows: int | None = None, reuse_prefix: bool = True, chunk_cells: int | None = None,
              screen: str | None = None, fixes=DEFAULT_FIXES, verify: int = 0,
              executor: str | Executor = "local") -> pd.DataFrame:
    """Ablate each cell on the task's kept prompts and record per-prompt and mean metric, baseline and effect; returns ``load_sweep(out)``.

    ``chunk_cells``: cells per part (default ``default_chunk``); a crash loses at most the chunk being computed.
    ``screen="attribution"``: estimate every cell first (AtP with the AtP* ``fixes``, ``screen.py``), then run
    the exact ablation only on the ``verify`` cells with the largest |estimate| and on ``verify`` random others
    (a calibration set); estimates and exact rows land in the same folder (column ``method``).
    ``executor``: where chunks are computed, "local" (this process), "ray" (a private Ray instance on this
    machine) or an Executor such as ``RayExecutor(address=..., workers=...)``; not part of the settings, so a
    sweep can be resumed under another executor.
    """
    out = Path(out)
    executor = get_executor(executor)
    executor.check(subject)
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
    if chunk_cells is not None and int(chunk_cells) < 1:
        raise InputError(f"chunk_cells must be >= 1, got {chunk_cells}")
    if screen is not None and screen not in METHODS:
        raise InputError(f"unknown screen {screen!r}: use {', '.join(METHODS)}")
    if screen is None and verify:
        raise InputError("verify needs a screen to choose the cells: pass screen='attribution' (--screen attribution)")
    if int(verify) < 0:
        raise InputError(f"verify must be >= 0, got {verify}")
    b = task.batch
    settings = {"model": subject.name, "task": task.describe(),
                "prompts_sha1": data_digest(b.input_ids, b.attention_mask, b.target_pos, b.target_ids, b.target_mask,
                                            b.foil_ids),
                "intervention": ablation.describe(), "metrics": [m.name for m in metrics], "n_cells": len(cells),
                "cells_sha1": hashlib.sha1("\n".join(names).encode()).hexdigest(), "seed": seed,
                "reuse_prefix": reuse_prefix}
    if screen is not None:
        settings["screen"] = {"method": screen, "fixes": list(check_fixes(fixes)), "verify": int(verify)}
    with sweep_folder(out).open(settings, resume=resume) as folder:
        if folder.previous is not None:
            base, base_values = folder.previous["baseline"], folder.previous.get("baseline_prompt_values")
            started = folder.previous.get("started")
        else:
            values = baseline_values(subject, b, metrics, max_rows)
            base = {k: float(np.mean(v)) for k, v in values.items()}
            base_values = {k: v.tolist() for k, v in values.items()}
            started = now()
        folder.update(baseline=base, baseline_prompt_values=base_values, model_facts=subject.facts(),
                      versions=_versions(), cells=names if len(names) <= 5000 else None, status="running",
                      started=started, finished=None)
        exact, annotate = cells, None
        if screen is not None:
            plan = SweepPlan(b, ablation, metrics, base, (), max_rows, reuse_prefix)
            exact, annotate = _screen_and_choose(subject, plan, folder, cells, fixes, int(verify), seed, base_values)
        todo = [c for c in exact if cell_key(ablation.name, c) not in folder.done]
        layers = tuple(sorted({layer for cell in todo for layer, _ in cell}))
        plan = SweepPlan(b, ablation, metrics, base, layers, max_rows, reuse_prefix)
        size = chunk_cells or default_chunk(len(exact), cells_per_forward(subject, b, max_rows)[1])
        bar = progress(total=len(exact), initial=len(exact) - len(todo), unit="cell",
                       desc=f"{ablation.name} sweep of {subject.name} on {task.name}")
        make = functools.partial(ChunkWorker, plan=plan)
        try:
            with closing(executor.map(subject, make, plan_chunks(todo, size, reuse_prefix), bar.update)) as results:
                for _, rows in results:
                    folder.append(annotate(rows) if annotate else rows)
        finally:
            bar.close()
        folder.update(status="complete", finished=now())
    return load_sweep(out)


def _screen_and_choose(subject, plan: SweepPlan, folder, cells: list[Cell], fixes, verify: int, seed: int,
                       base_values: dict | None):
    """Screen every cell (or read the estimates a resumed folder holds), then choose the cells to verify exactly.

    Returns the cells to run exactly and a function that adds each exact row's estimate and role ("top" /
    "calibration"); the chosen names go into the manifest's "screen" entry.
    """
    method, name = method_name(fixes), plan.ablation.name
    keys = {cell_key(name, c, method): c for c in cells}
    if set(keys) <= folder.done:
        rows = load_sweep(folder.folder.path, prompt_values=False)
        rows = rows[rows["cell"].isin(keys)]
        seconds = (folder.previous or {}).get("screen", {}).get("seconds")
    else:
        if base_values is None:  # a folder from before per-prompt baselines: recompute them
            base_values = {k: v.tolist() for k, v in baseline_values(subject, plan.batch, plan.metrics, plan.max_rows).items()}
        estimates = screen_heads(subject, plan.batch, plan.ablation, plan.metrics, fixes=fixes, max_rows=plan.max_rows)
        rows = estimate_rows(estimates, cells, plan, {k: np.asarray(v) for k, v in base_values.items()})
        folder.append(rows)
        seconds = estimates.seconds
    estimate = {(r.heads, r.metric): r.effect for r in rows.itertuples()}
    first = rows[rows["metric"] == plan.metrics[0].name].set_index("heads")["effect"]
    names = [cell_name(c) for c in cells]
    top, calibration = verification_cells(names, [first[n] for n in names], verify, seed)
    folder.update(screen={"method": method, "seconds": seconds, "top": top, "calibration": calibration})
    role = {**{n: "calibration" for n in calibration}, **{n: "top" for n in top}}
    chosen = [c for c, n in zip(cells, names) if n in role]

    def annotate(exact_rows: pd.DataFrame) -> pd.DataFrame:
        return exact_rows.assign(estimate=[estimate[(h, m)] for h, m in zip(exact_rows["heads"], exact_rows["metric"])],
                                 verify=[role[h] for h in exact_rows["heads"]])
    return chosen, annotate

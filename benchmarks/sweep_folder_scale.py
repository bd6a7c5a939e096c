"""Scale of a sweep folder: write, resume-scan and load a synthetic all-pairs sweep (36,315 cells of a 30 x 9 model).

No model runs: rows are random numbers in the real format (``workbench.sweeps.runner.COLUMNS``, per-prompt
values included), written through the real driver path (``FolderWriter.append``, one part per chunk).
Prints, per chunk size: parts, folder size, driver write time per cell, resume scan (lock, manifest,
every part read and checksummed), ``load_sweep`` with and without per-prompt values, and a SweepViewer
refresh; then the same for the old layout (one Parquet file per cell, read file by file).

    PYTHONPATH=. python benchmarks/sweep_folder_scale.py [--layers 30 --heads 9 --prompts 64 --chunks 0 64 1024]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from workbench.io import atomic_write
from workbench.sweeps.engine import cell_name
from workbench.sweeps.runner import COLUMNS, MAX_PARTS, default_chunk, head_pairs, load_sweep, sweep_folder

METRICS = ("loss", "accuracy")


def synthetic_rows(cells, n_prompts: int, rng) -> pd.DataFrame:
    """Rows in the sweep format for ``cells`` (pairs), one per (cell, metric), random values."""
    n = len(cells) * len(METRICS)
    per_prompt = rng.normal(3.0, 0.5, (n, n_prompts))
    names = [cell_name(c) for c in cells for _ in METRICS]
    value = per_prompt.mean(1)
    return pd.DataFrame({
        "cell": [f"zero:{x}" for x in names], "layer": np.int64(-1), "head": np.int64(-1), "heads": names,
        "intervention": "zero", "metric": list(METRICS) * len(cells), "value": value, "baseline": 3.0,
        "effect": value - 3.0, "sem": per_prompt.std(1, ddof=1) / np.sqrt(n_prompts), "n_prompts": np.int64(n_prompts),
        "seconds": 0.01, "prompt_values": list(per_prompt)}, columns=COLUMNS)


def timed(fn, repeats: int = 3) -> tuple[float, object]:
    """Median wall time of ``repeats`` calls, and the last result."""
    times, out = [], None
    for _ in range(repeats):
        began = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - began)
    return statistics.median(times), out


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def bench_chunked(root: Path, cells, chunk: int, n_prompts: int, rng) -> dict:
    out = root / f"chunk{chunk}"
    settings = {"model": "synthetic", "n_cells": len(cells), "chunk": "any"}
    write = 0.0
    with sweep_folder(out).open(settings, resume=False) as folder:
        folder.update(baseline={m: 3.0 for m in METRICS}, model_facts={"n_layers": 30, "n_heads": 9},
                      cells=None, status="running")
        for i in range(0, len(cells), chunk):
            rows = synthetic_rows(cells[i:i + chunk], n_prompts, rng)
            began = time.perf_counter()
            folder.append(rows)
            write += time.perf_counter() - began
        folder.update(status="complete")

    def scan():
        with sweep_folder(out).open(settings, resume=True) as folder:
            return len(folder.done)

    scan_s, done = timed(scan)
    assert done == len(cells), done
    load_s, df = timed(lambda: load_sweep(out))
    assert len(df) == len(cells) * len(METRICS)
    lean_s, _ = timed(lambda: load_sweep(out, prompt_values=False))
    viewer_s = viewer_refresh(out)
    return {"layout": f"chunks of {chunk}", "parts": len(list((out / "parts").glob("part-*.parquet"))),
            "MB": folder_bytes(out) / 1e6, "write ms/cell": 1e3 * write / len(cells), "resume scan s": scan_s,
            "load s": load_s, "load (no per-prompt) s": lean_s, "viewer refresh s": viewer_s}


def viewer_refresh(out: Path) -> float:
    try:
        from workbench.widgets.sweep_viewer import SweepViewer
    except ImportError:
        return float("nan")
    viewer = SweepViewer(out, background=False)
    seconds, _ = timed(viewer.refresh)
    viewer.close()
    return seconds


def bench_legacy(root: Path, cells, n_prompts: int, rng) -> dict:
    """The old layout: a file per cell (no per-prompt values), read file by file; resume = one stat per cell."""
    out = root / "legacy"
    parts = out / "parts"
    parts.mkdir(parents=True)
    began = time.perf_counter()
    for cell in cells:
        rows = synthetic_rows([cell], n_prompts, rng).drop(columns="prompt_values")
        atomic_write(parts / f"part-zero-{cell_name(cell)}.parquet", lambda p: rows.to_parquet(p, index=False))
    write = time.perf_counter() - began
    scan_s, _ = timed(lambda: sum((parts / f"part-zero-{cell_name(c)}.parquet").is_file() for c in cells), 1)
    load_s, df = timed(lambda: pd.concat([pd.read_parquet(p) for p in sorted(parts.glob("part-*.parquet"))],
                                         ignore_index=True), 1)
    assert len(df) == len(cells) * len(METRICS)
    return {"layout": "one file per cell (old)", "parts": len(cells), "MB": folder_bytes(out) / 1e6,
            "write ms/cell": 1e3 * write / len(cells), "resume scan s": scan_s, "load s": load_s,
            "load (no per-prompt) s": float("nan"), "viewer refresh s": float("nan")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=30)
    p.add_argument("--heads", type=int, default=9)
    p.add_argument("--prompts", type=int, default=64, help="per-prompt values per row (default 64)")
    p.add_argument("--chunks", type=int, nargs="+", default=[0, 64, 1024], help="cells per part; 0 = the default")
    p.add_argument("--legacy", type=int, default=None, help="cells for the old layout (default: all; 0 skips)")
    p.add_argument("--dir", default=None, help="where to write (default: a temp folder, removed)")
    args = p.parse_args()
    os.environ.setdefault("WORKBENCH_PROGRESS", "0")
    cells = head_pairs([(l, h) for l in range(args.layers) for h in range(args.heads)])
    rng = np.random.default_rng(0)
    root = Path(args.dir or tempfile.mkdtemp(prefix="sweep-scale-"))
    print(f"{len(cells)} cells x {len(METRICS)} metrics, {args.prompts} per-prompt values per row; default chunk "
          f"{default_chunk(len(cells), 1)} (MAX_PARTS {MAX_PARTS}, one cell per forward)")
    results = []
    try:
        for chunk in args.chunks:
            results.append(bench_chunked(root, cells, chunk or default_chunk(len(cells), 1), args.prompts, rng))
            print(results[-1], flush=True)
        n_legacy = len(cells) if args.legacy is None else args.legacy
        if n_legacy:
            results.append(bench_legacy(root, cells[:n_legacy], args.prompts, rng))
            results[-1]["layout"] += f", {n_legacy} cells"
            print(results[-1], flush=True)
    finally:
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)
    keys = list(results[0]) if results else []
    print("| " + " | ".join(keys) + " |\n|" + " --- |" * len(keys))
    for r in results:
        print("| " + " | ".join(f"{v:.3g}" if isinstance(v, float) else str(v) for v in r.values()) + " |")


if __name__ == "__main__":
    main()

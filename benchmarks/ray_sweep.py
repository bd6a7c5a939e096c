"""Local vs Ray executor on the same sweep, Ray's overhead per cell, the 36k-cell folder, and a projection to 8/64 GPUs.

1. The same zero-ablation sweep of ``--model`` (single heads of a few layers, induction prompts) computed by the
   local executor (this process, ``--threads`` torch threads) and by the Ray executor (a private Ray instance
   on 127.0.0.1, ``--workers`` actors of ``--threads // --workers`` threads each), interleaved, ``--repeats``
   times each. Reports the median walls, their ratio, Ray's fixed start-up (time to the first finished chunk
   minus a chunk's compute) and the steady-state throughput ratio; checks the rows are equal.
2. Ray's overhead per chunk: chunks of a sweep's size (rows with per-prompt values) sent to actors whose worker
   does no work (a tiny model folder), so the round trip (submit, run, pickle rows back, ``ray.wait``) is all
   that is timed; reported per chunk and per cell.
3. The driver's side of a 36k-cell pair sweep (``benchmarks/sweep_folder_scale.py``'s synthetic folder at the
   default chunk size): write per cell, resume scan, ``load_sweep``.
4. On paper: cells/s on G GPUs = min(G / t_cell, 1 / t_driver), t_driver = write + Ray overhead per cell.

    PYTHONPATH=. python benchmarks/ray_sweep.py [--model smollm2-135m --layers 0,10,20 --heads-per-layer 4
                                                 --prompts 4 --seq-len 32 --chunk 2 --workers 2 --threads 2]
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import workbench as wb
from workbench.executors import Executor, RayExecutor, get_executor
from workbench.sweeps import run_sweep
from workbench.sweeps.runner import COLUMNS, default_chunk, head_pairs
from workbench.tasks import induction_task


class Timed(Executor):
    """Wraps an executor and records when ``map`` began and when each chunk arrived (seconds, perf_counter)."""

    def __init__(self, inner: Executor):
        self.inner = get_executor(inner)
        self.name = self.inner.name
        self.began, self.arrived = 0.0, []

    def check(self, subject) -> None:
        self.inner.check(subject)

    def map(self, subject, make, chunks, progress=None):
        self.began, self.arrived = time.perf_counter(), []
        for item in self.inner.map(subject, make, chunks, progress):
            self.arrived.append(time.perf_counter())
            yield item


def sweep_once(subject, task, cells, chunk, executor, out: Path) -> tuple[float, pd.DataFrame, Timed]:
    """Wall seconds of one sweep into a fresh ``out`` (model already loaded on the driver), its rows, its timings."""
    shutil.rmtree(out, ignore_errors=True)
    timed = Timed(executor)
    began = time.perf_counter()
    df = run_sweep(subject, task, out, metrics=["loss"], cells=cells, chunk_cells=chunk, executor=timed)
    return time.perf_counter() - began, df, timed


def steady_cells_per_s(timed: Timed, chunk: int, skip: int) -> float:
    """Cells per second between the ``skip``-th and the last arrival (start-up and the first round excluded)."""
    t = timed.arrived
    if len(t) <= skip + 1:
        return float("nan")
    return chunk * (len(t) - 1 - skip) / (t[-1] - t[skip])


class NoWork:
    """A chunk worker that computes nothing and returns ``rows`` (the payload of a real chunk)."""

    def __init__(self, subject, rows: pd.DataFrame):
        self.rows = rows

    def __call__(self, chunk, progress=None) -> pd.DataFrame:
        if progress is not None:
            progress(len(chunk))
        return self.rows


def synthetic_chunk(n_cells: int, n_prompts: int) -> pd.DataFrame:
    """Rows in the sweep format for ``n_cells`` single-head cells, one metric, random values."""
    rng = np.random.default_rng(0)
    per_prompt = rng.normal(3.0, 0.5, (n_cells, n_prompts))
    return pd.DataFrame({
        "cell": [f"zero:L0H{i}" for i in range(n_cells)], "layer": np.int64(0), "head": np.arange(n_cells),
        "heads": [f"L0H{i}" for i in range(n_cells)], "intervention": "zero", "metric": "loss",
        "value": per_prompt.mean(1), "baseline": 3.0, "effect": per_prompt.mean(1) - 3.0, "sem": 0.1,
        "n_prompts": np.int64(n_prompts), "seconds": 0.0, "prompt_values": list(per_prompt)}, columns=COLUMNS)


def ray_overhead(workers: int, chunk: int, n_prompts: int, n_chunks: int, root: Path) -> float:
    """Seconds per chunk of Ray's round trip (submit, pickle rows back, wait) with workers that do no work."""
    from tests.conftest import tiny_llama

    folder = root / "tiny"
    subject = tiny_llama()
    subject.model.save_pretrained(folder)
    subject.tokenizer.save_pretrained(folder)
    subject = wb.load(str(folder), device="cpu")
    make = functools.partial(NoWork, rows=synthetic_chunk(chunk, n_prompts))
    timed = Timed(RayExecutor(workers=workers, threads=1))
    n = sum(1 for _ in timed.map(subject, make, [[i] * chunk for i in range(n_chunks)]))
    assert n == n_chunks
    skip = 2 * workers  # the first round includes the actors' start and model load
    return (timed.arrived[-1] - timed.arrived[skip]) / (n_chunks - 1 - skip)


def folder_scale(root: Path) -> dict:
    """sweep_folder_scale's 36,315-cell synthetic folder at the default chunk: write, resume scan and load timings."""
    from benchmarks.sweep_folder_scale import bench_chunked

    cells = head_pairs([(layer, head) for layer in range(30) for head in range(9)])
    return bench_chunked(root, cells, default_chunk(len(cells), 1), 64, np.random.default_rng(0))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--layers", default="0,10,20", help="layers whose first --heads-per-layer heads are swept")
    p.add_argument("--heads-per-layer", type=int, default=4)
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=32)
    p.add_argument("--chunk", type=int, default=2, help="cells per chunk (both executors)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=2, help="torch threads of the local run; Ray workers get threads/workers")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--overhead-chunks", type=int, default=60)
    p.add_argument("--skip", default="", help="comma-separated parts to skip: sweep, overhead, folder")
    p.add_argument("--driver-write-ms", type=float, default=None,
                   help="with --skip folder: the driver's write per cell for the projection (RESULTS.md: 0.51)")
    args = p.parse_args()
    os.environ.setdefault("WORKBENCH_PROGRESS", "0")
    skip = set(filter(None, args.skip.split(",")))
    root = Path(tempfile.mkdtemp(prefix="ray-sweep-"))
    print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    try:
        if "sweep" not in skip:
            torch.set_num_threads(args.threads)
            subject = wb.load(args.model, device="cpu")
            task = induction_task(subject, args.prompts, args.seq_len, seed=0, filter=False)
            cells = [((layer, head),) for layer in map(int, args.layers.split(",")) for head in range(args.heads_per_layer)]
            ray = RayExecutor(workers=args.workers, threads=max(1, args.threads // args.workers))
            walls = {"local": [], "ray": []}
            steady = {"local": [], "ray": []}
            first = []
            reference = None
            for r in range(args.repeats):
                for name, executor in (("local", "local"), ("ray", ray)):
                    wall, df, timed = sweep_once(subject, task, cells, args.chunk, executor, root / name)
                    walls[name].append(wall)
                    steady[name].append(steady_cells_per_s(timed, args.chunk, args.workers if name == "ray" else 1))
                    if name == "ray":
                        first.append(timed.arrived[0] - timed.began)
                    rows = df.drop(columns=["seconds"]).reset_index(drop=True)
                    if reference is None:
                        reference = rows
                    else:
                        pd.testing.assert_frame_equal(rows.drop(columns="prompt_values"),
                                                      reference.drop(columns="prompt_values"), atol=1e-6, rtol=0)
                    print(f"repeat {r} {name}: {wall:.1f} s, steady {steady[name][-1]:.2f} cells/s, "
                          f"load {os.getloadavg()[0]:.1f}", flush=True)
            med = {k: statistics.median(v) for k, v in walls.items()}
            per_cell_local = med["local"] / len(cells)
            ray_rate = statistics.median(steady["ray"])  # cells/s of all workers: a chunk takes chunk*workers/rate
            startup = statistics.median(first) - args.chunk * args.workers / ray_rate
            print(f"\n{len(cells)} cells ({args.model}, {args.prompts} prompts x {2 * args.seq_len + 1} tokens, chunks of "
                  f"{args.chunk}); local {args.threads} threads vs Ray {args.workers} workers x "
                  f"{max(1, args.threads // args.workers)} thread(s); rows equal to 1e-6")
            print(f"wall: local {med['local']:.1f} s, Ray {med['ray']:.1f} s (local/Ray {med['local'] / med['ray']:.2f})")
            print(f"steady throughput: local {statistics.median(steady['local']):.2f} cells/s, Ray "
                  f"{statistics.median(steady['ray']):.2f} cells/s (Ray/local "
                  f"{statistics.median(steady['ray']) / statistics.median(steady['local']):.2f})")
            print(f"Ray start-up (init, actors, model load; first chunk minus its compute): ~{startup:.1f} s; "
                  f"local per cell {1e3 * per_cell_local:.0f} ms")
        overhead = float("nan")
        if "overhead" not in skip:
            overhead = ray_overhead(args.workers, args.chunk, args.prompts, args.overhead_chunks, root)
            print(f"Ray round trip per chunk of {args.chunk} cells ({args.prompts} per-prompt values), no work: "
                  f"{1e3 * overhead:.1f} ms ({1e3 * overhead / args.chunk:.1f} ms per cell)")
        write = float("nan") if args.driver_write_ms is None else args.driver_write_ms / 1e3
        if "folder" not in skip:
            scale = folder_scale(root)
            write = scale["write ms/cell"] / 1e3
            print(f"36,315-cell folder ({scale['parts']} parts, {scale['MB']:.1f} MB): write {scale['write ms/cell']:.2f} "
                  f"ms/cell, resume scan {scale['resume scan s']:.1f} s, load_sweep {scale['load s']:.1f} s, "
                  f"without per-prompt values {scale['load (no per-prompt) s']:.1f} s")
        # on paper: the driver writes every chunk and receives it from Ray; workers compute in parallel
        driver = write + (overhead / args.chunk if overhead == overhead else 0.0)
        if driver == driver:
            print(f"\ndriver cost per cell {1e3 * driver:.2f} ms -> at most {1 / driver:.0f} cells/s whatever the workers")
            for t_gpu in (0.005, 0.02, 0.1):
                rates = {g: min(g / t_gpu, 1 / driver) for g in (1, 8, 64)}
                print(f"GPU compute {1e3 * t_gpu:.0f} ms/cell: " + ", ".join(
                    f"{g} GPUs {rate:.0f} cells/s" for g, rate in rates.items())
                      + f"; the driver limits beyond {t_gpu / driver:.0f} GPUs")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

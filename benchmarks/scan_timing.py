"""Time `wb.scan` (the default detectors) on the default model: model load, scan wall time, peak memory.

Usage: PYTHONPATH=. python benchmarks/scan_timing.py [--device cuda] [--gguf PATH] [--repeat 2]
Prints a short table; the first scan includes one-off warm-up (kernel compilation, allocator).
"""

from __future__ import annotations

import argparse
import os
import resource
import time

import torch

import workbench as wb
from workbench.models import fetch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--device", default=None)
    parser.add_argument("--gguf", default=os.environ.get("WORKBENCH_GGUF"), help="local GGUF (machines with no PyPI)")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    t0 = time.time()
    fetch(args.model, gguf=args.gguf)
    prepared = time.time() - t0
    t0 = time.time()
    subject = wb.load(args.model, device=args.device)
    loaded = time.time() - t0
    device = torch.cuda.get_device_name() if subject.device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    rows = []
    for i in range(args.repeat):
        if subject.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            torch.cuda.synchronize()
        t0 = time.time()
        atlas = wb.scan(subject, seed=0)
        if subject.device.type == "cuda":
            torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() / 2**30 if subject.device.type == "cuda"
                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
        rows.append((i, time.time() - t0, peak, atlas.meta["detector_seconds"]))
    top = atlas.top("induction", 3)
    print(f"\nscan of {subject.name} ({subject.n_total_heads} heads) on {device}, {subject.dtype}")
    print(f"prepare cache {prepared:.1f} s, load {loaded:.2f} s")
    print(f"{'run':>4} {'scan s':>8} {'peak GiB':>9}  per detector (s)")
    for i, secs, peak, per in rows:
        print(f"{i:>4} {secs:>8.1f} {peak:>9.2f}  {per}")
    print("top induction:", ", ".join(f"L{r['layer']}H{r['head']} {r['induction']:.2f}" for _, r in top.iterrows()))


if __name__ == "__main__":
    main()

"""Time the full single-head zero-ablation sweep (every head) on induction prompts against a naive loop.

Usage (GPU, the issue's size):   PYTHONPATH=. python benchmarks/ablation_sweep.py --device cuda
      (CPU, an affordable size): PYTHONPATH=. python benchmarks/ablation_sweep.py --prompts 4 --seq-len 32 --naive-cells 5
      (CPU, fair ratio on a few layers): ... --prompts 4 --seq-len 32 --layers 0,10,20,29 --naive-cells 0

The sweep runs through ``workbench.sweeps.run_sweep`` (prefix reuse + several ablations per forward);
the naive reference is one full forward per cell with one ``apply(ZeroHead)`` hook, on the same
prompts, timed on ``--naive-cells`` evenly spread cells (all when 0 or >= the head count) and
extrapolated; both give the same numbers (checked on the timed cells). Also reports the top heads by
loss increase and their agreement with the induction score measured on the same prompts.
Prints a short table; the sweep folder is kept under --out.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time

import numpy as np
import torch
from scipy.stats import spearmanr

import workbench as wb
from workbench.interventions import ZeroHead, apply
from workbench.patterns import capture
from workbench.scores import induction_score
from workbench.stimuli import repeated_random_tokens
from workbench.sweeps import run_sweep, single_heads
from workbench.sweeps.report import effect_matrix, sweep_report, top_cells
from workbench.tasks import METRICS, induction_task, metric_values


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--device", default=None)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=256, help="random tokens per repeat (the prompt has 2x + BOS)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--naive-cells", type=int, default=27, help="cells timed with the naive loop (0 = all)")
    parser.add_argument("--layers", default=None, help="comma-separated layers whose heads are swept (default: all)")
    parser.add_argument("--out", default="runs/bench-ablation-sweep")
    args = parser.parse_args()

    subject = wb.load(args.model, device=args.device)
    device = torch.cuda.get_device_name() if subject.device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    sync = torch.cuda.synchronize if subject.device.type == "cuda" else (lambda: None)
    task = induction_task(subject, args.prompts, args.seq_len, seed=args.seed, filter=False)
    shutil.rmtree(args.out, ignore_errors=True)

    layers = range(subject.n_layers) if args.layers is None else [int(x) for x in args.layers.split(",")]
    cells = single_heads(subject, [(l, h) for l in layers for h in range(subject.n_heads)])
    sync()
    t0 = time.perf_counter()
    df = run_sweep(subject, task, args.out, intervention="zero", metrics=["loss"], cells=cells)
    sync()
    sweep_s = time.perf_counter() - t0

    n = len(cells) if args.naive_cells <= 0 else min(args.naive_cells, len(cells))
    timed = [cells[i] for i in np.linspace(0, len(cells) - 1, n).round().astype(int)]
    sync()
    t0 = time.perf_counter()
    naive = {}
    for cell in timed:
        with apply(subject, ZeroHead(cell)):
            naive[cell] = float(metric_values(subject, task.batch, [METRICS["loss"]], batch_size=len(task.batch))["loss"].mean())
    sync()
    naive_s = (time.perf_counter() - t0) * len(cells) / n
    fast = df.set_index("heads")["value"]
    worst = max(abs(fast[f"L{c[0][0]}H{c[0][1]}"] - v) for c, v in naive.items())

    stim = repeated_random_tokens(subject, seq_len=args.seq_len, n_repeats=2, batch=min(args.prompts, 16), seed=args.seed)
    cap = capture(subject, stim.input_ids)
    ind = np.stack([induction_score(cap.patterns[l].transpose(0, 1), stim.induction_target).numpy()  # (H, B, Nq, Nk)
                    for l in range(subject.n_layers)])
    eff = effect_matrix(df, subject.n_layers, subject.n_heads, "loss")
    top_eff = {(int(r[1:].split("H")[0]), int(r.split("H")[1])) for r in top_cells(df, 10)["heads"]}
    swept = ~np.isnan(eff)
    rho = spearmanr(eff[swept], ind[swept]).statistic
    top_ind = {tuple(int(x) for x in np.unravel_index(i, ind.shape)) for i in np.argsort(np.where(swept, ind, -1).ravel())[::-1][:10]}
    report = sweep_report(args.out)

    print(f"\n| device | model | prompts x tokens | cells | sweep | naive loop ({n} cells timed, extrapolated) | ratio | max |diff| |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    print(f"| {device} | {subject.name} | {len(task.batch)} x {task.batch.n_tokens} | {len(cells)} | {sweep_s:.1f} s | "
          f"{naive_s:.1f} s | {naive_s / sweep_s:.1f}x | {worst:.2e} |")
    print(f"\nbaseline loss {df.attrs['sweep']['baseline']['loss']:.4f} (nats/token on the repeated half)")
    print("top 10 heads by loss increase when zeroed:")
    print(top_cells(df, 10).to_string(index=False))
    print(f"Spearman(effect, induction score) over the swept heads = {rho:.3f}; "
          f"top-10 overlap with the induction-score top 10 of the swept heads: {len(top_eff & top_ind)}")
    print(f"induction-score top 10: {', '.join(f'L{l}H{h} {ind[l, h]:.2f}' for l, h in sorted(top_ind, key=lambda x: -ind[x]))}")
    print(f"report: {report}")


if __name__ == "__main__":
    main()

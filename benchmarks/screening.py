"""Attribution screening (AtP / AtP*) against the exact single-head sweep, and which ablation finds the induction heads.

Usage (the shared 2-core CPU; one thread is much faster than two under heavy load, for every method alike):
    OMP_NUM_THREADS=1 PYTHONPATH=. nice -n 5 python benchmarks/screening.py --prompts 8 --seq-len 32
(GPU: PYTHONPATH=. python benchmarks/screening.py --device cuda --prompts 16 --seq-len 64)

In one run, on the induction task (BOS + seq_len random tokens repeated once, loss on the repeat, no filter):
- per ablation (zero, mean, resample, query = query zeroing, patch = activation patching from prompts whose first
  repeat is replaced by other random tokens): the exact sweep of every head (``run_sweep``: prefix reuse and
  several cells per forward), and the attribution screen (``screen_heads``) without and with the AtP* fixes, timed;
  Spearman(estimate, exact) over all heads (signed, and of |values|) and top-10 recall (the exact top 10 by
  |effect| within the estimate's top 30);
- the naive loop (one full forward per cell with one ``apply(ZeroHead)``), timed on ``--naive-cells`` evenly spread
  heads and extrapolated, and the exact sweep's floor: naive time x mean over cells of (L - layer) / L (prefix reuse
  can skip the layers before a cell, never the cell's own and later layers);
- ``run_sweep(screen="attribution", verify=K)`` on zero ablation (screen + exact top-K + K random), timed;
- the ablation choice: Spearman(exact effect, induction score of the scan atlas) and where the atlas's top
  induction heads rank by exact effect, per ablation.
Prints markdown tables and writes OUT/results.json (updated after each step).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

import workbench as wb
from workbench.interventions import ZeroHead, apply
from workbench.io import atomic_write_json
from workbench.scanning import scan
from workbench.stimuli import repeated_random_tokens
from workbench.sweeps import Patch, get_ablation, run_sweep, screen_heads, single_heads
from workbench.sweeps.report import effect_matrix, screen_summary, screen_table
from workbench.tasks import METRICS, induction_task, metric_values

Z_FIXES = [(), ("graddrop",)]  # the QK fix changes nothing for ablations of z (tested): atp+qk = atp, atp* = atp+graddrop
Q_FIXES = [(), ("qk",), ("graddrop",), ("qk", "graddrop")]


def corrupted(subject, task, seq_len: int, seed: int):
    """The task's prompts with the first repeat replaced by other random tokens (the source of activation patching)."""
    other = repeated_random_tokens(subject, seq_len=seq_len, n_repeats=2, batch=len(task.batch), seed=seed).input_ids
    ids = task.batch.input_ids.clone()
    ids[:, 1:1 + seq_len] = other[:, 1:1 + seq_len]
    return type(task.batch)(ids, task.batch.attention_mask, task.batch.target_pos, task.batch.target_ids,
                            task.batch.target_mask, task.batch.foil_ids, task.batch.items)


def compare(est: np.ndarray, exact: np.ndarray, k: int = 10, pool: int = 30) -> dict:
    """Spearman (signed and of |values|) and top-k recall: the exact top k by |effect| within the estimate's top ``pool``."""
    e, x = est.ravel(), exact.ravel()
    top_exact = set(np.argsort(-np.abs(x), kind="stable")[:k])
    top_est = set(np.argsort(-np.abs(e), kind="stable")[:pool])
    return {"spearman": float(spearmanr(e, x).statistic), "spearman_abs": float(spearmanr(np.abs(e), np.abs(x)).statistic),
            f"recall_top{k}_in_{pool}": len(top_exact & top_est) / k}


def name_of(flat: int, n_heads: int) -> str:
    return f"L{flat // n_heads}H{flat % n_heads}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--device", default=None)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=32, help="random tokens per repeat (the prompt has 2x + BOS)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ablations", default="zero,mean,resample,query,patch")
    parser.add_argument("--naive-cells", type=int, default=30, help="heads timed with the naive loop (0 = all)")
    parser.add_argument("--verify", type=int, default=10)
    parser.add_argument("--out", default="runs/bench-screening")
    parser.add_argument("--report", metavar="RESULTS_JSON", help="only print the tables of an earlier (possibly cut-short) run")
    args = parser.parse_args()
    if args.report:
        report(json.loads(Path(args.report).read_text()))
        return

    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    subject = wb.load(args.model, device=args.device)
    cuda = subject.device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    device = torch.cuda.get_device_name() if cuda else f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"
    task = induction_task(subject, args.prompts, args.seq_len, seed=args.seed, filter=False)
    L, H = subject.n_layers, subject.n_heads
    loss = METRICS["loss"]
    res = {"device": device, "model": subject.name, "prompts": len(task.batch), "tokens": task.batch.n_tokens,
           "started": time.strftime("%Y-%m-%d %H:%M"), "load_start": os.getloadavg()[0], "ablations": {}}

    def log(text):
        print(f"[{time.strftime('%H:%M:%S')} load {os.getloadavg()[0]:.1f}] {text}", flush=True)

    def save():
        atomic_write_json(out / "results.json", res)

    t0 = time.perf_counter()
    induction = scan(subject, ("induction",), seed=args.seed + 1).matrix("induction")
    res["induction_scan_s"] = time.perf_counter() - t0
    log(f"induction scores: top {', '.join(name_of(i, H) + f' {induction.ravel()[i]:.2f}' for i in np.argsort(-induction.ravel())[:10])}")

    def naive_and_verify():
        # the naive loop (zero ablation), timed on evenly spread heads and extrapolated
        cells = single_heads(subject)
        n = len(cells) if args.naive_cells <= 0 else min(args.naive_cells, len(cells))
        timed = [cells[i] for i in np.linspace(0, len(cells) - 1, n).round().astype(int)]
        zero = np.load(out / "exact-zero.npy") if (out / "exact-zero.npy").is_file() else None
        base = float(metric_values(subject, task.batch, [loss], batch_size=len(task.batch))["loss"].mean())
        worst, load0 = 0.0, os.getloadavg()[0]
        sync()
        t0 = time.perf_counter()
        for cell in timed:
            with apply(subject, ZeroHead(cell)):
                v = float(metric_values(subject, task.batch, [loss], batch_size=len(task.batch))["loss"].mean())
            if zero is not None:
                worst = max(worst, abs(v - base - zero[cell[0]]))
        sync()
        per_cell = (time.perf_counter() - t0) / n
        floor_share = float(np.mean([(L - cell[0][0]) / L for cell in cells]))
        res["naive"] = {"cells": len(cells), "cells_timed": n, "per_cell_s": per_cell, "total_s": per_cell * len(cells), "load": load0,
                        "max_abs_diff_vs_sweep": worst, "floor_share": floor_share, "floor_s": per_cell * len(cells) * floor_share}
        log(f"naive: {per_cell:.2f} s per cell, {per_cell * len(cells):.0f} s extrapolated; floor {res['naive']['floor_s']:.0f} s")
        save()

        if args.verify and "zero" in res["ablations"]:
            sync()
            t0 = time.perf_counter()
            df = run_sweep(subject, task, out / "verified-zero", intervention="zero", metrics=["loss"], screen="attribution",
                           verify=args.verify, seed=args.seed)
            sync()
            res["verify"] = {"k": args.verify, "seconds": time.perf_counter() - t0, **screen_summary(screen_table(df))}
            log(f"verify: {res['verify']}")
            save()

    for name in args.ablations.split(","):
        def make():
            return Patch(corrupted(subject, task, args.seq_len, args.seed + 7)) if name == "patch" else get_ablation(name, args.seed)
        entry = {"load_before": os.getloadavg()[0]}
        sync()
        t0 = time.perf_counter()
        df = run_sweep(subject, task, out / f"exact-{name}", intervention=make(), metrics=["loss"])
        sync()
        entry["exact_s"] = time.perf_counter() - t0
        exact = effect_matrix(df, L, H, "loss")
        np.save(out / f"exact-{name}.npy", exact)
        log(f"{name}: exact sweep {entry['exact_s']:.0f} s")
        entry["screens"] = {}
        for fixes in (Q_FIXES if name == "query" else Z_FIXES):
            sync()
            t0 = time.perf_counter()
            est = screen_heads(subject, task.batch, make(), [loss], fixes=fixes)
            sync()
            seconds = time.perf_counter() - t0
            m = est.matrix("loss")
            np.save(out / f"estimate-{name}-{est.method}.npy", m)
            entry["screens"][est.method] = {"seconds": seconds, "speedup": entry["exact_s"] / seconds, **compare(m, exact),
                                            "top10": [name_of(i, H) for i in np.argsort(-np.abs(m.ravel()), kind="stable")[:10]]}
            log(f"{name} {est.method}: {seconds:.1f} s, {entry['screens'][est.method]}")
        order = np.argsort(-exact.ravel(), kind="stable")  # by effect (loss increase when ablated)
        rank = {int(i): r + 1 for r, i in enumerate(order)}
        ind_top = np.argsort(-induction.ravel(), kind="stable")[:10]
        entry["exact_top10"] = [f"{name_of(i, H)} {exact.ravel()[i]:+.3f}" for i in np.argsort(-np.abs(exact.ravel()), kind="stable")[:10]]
        entry["spearman_effect_induction"] = float(spearmanr(exact.ravel(), induction.ravel()).statistic)
        entry["induction_top10_ranks"] = {name_of(i, H): rank[int(i)] for i in ind_top}
        entry["induction_in_effect_top10"] = int(len(set(order[:10]) & set(ind_top)))
        entry["load_after"] = os.getloadavg()[0]
        res["ablations"][name] = entry
        save()
        if name == "zero":  # the naive loop and the verified sweep right after zero ablation, so a cut-short run has them
            naive_and_verify()

    res["finished"] = time.strftime("%Y-%m-%d %H:%M")
    res["load_end"] = os.getloadavg()[0]
    save()
    report(res)


def report(res: dict) -> None:
    """The results as markdown tables."""
    print(f"\n{res['model']}, induction task, {res['prompts']} prompts x {res['tokens']} tokens, {res['device']}, "
          f"load average {res['load_start']:.1f} at start, {res.get('load_end', float('nan')):.1f} at end")
    naive = res.get("naive", {})
    print("\n| ablation | exact sweep | screen | method | speedup | Spearman | Spearman abs | top-10 recall (in top 30) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, e in res["ablations"].items():
        for method, s in e["screens"].items():
            print(f"| {name} | {e['exact_s']:.0f} s | {s['seconds']:.1f} s | {method} | {s['speedup']:.1f}x | "
                  f"{s['spearman']:.3f} | {s['spearman_abs']:.3f} | {s['recall_top10_in_30']:.1f} |")
    if naive and "zero" in res["ablations"]:
        z = res["ablations"]["zero"]["exact_s"]
        print(f"\nnaive loop (zero): {naive['per_cell_s']:.2f} s per cell x {naive['cells']} = {naive['total_s']:.0f} s "
              f"({naive['cells_timed']} cells timed; max |diff| vs sweep {naive['max_abs_diff_vs_sweep']:.1e}); "
              f"exact sweep {z:.0f} s = naive / {naive['total_s'] / z:.2f}; floor (prefix reuse bound, share "
              f"{naive['floor_share']:.3f}) {naive['floor_s']:.0f} s: exact / floor = {z / naive['floor_s']:.2f}")
    print("\n| ablation | Spearman(exact effect, induction score) | atlas top-10 induction heads: rank by exact effect | "
          "induction heads in the effect top 10 | exact top 10 |")
    print("| --- | --- | --- | --- | --- |")
    for name, e in res["ablations"].items():
        ranks = ", ".join(f"{h} {r}" for h, r in e["induction_top10_ranks"].items())
        print(f"| {name} | {e['spearman_effect_induction']:.3f} | {ranks} | {e['induction_in_effect_top10']} | "
              f"{', '.join(e['exact_top10'])} |")
    if "verify" in res:
        print(f"\nrun_sweep(screen='attribution', verify={res['verify']['k']}) on zero ablation: "
              f"{res['verify']['seconds']:.0f} s; {json.dumps({k: v for k, v in res['verify'].items() if k != 'seconds'})}")


if __name__ == "__main__":
    main()

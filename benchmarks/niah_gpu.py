"""NIAH up to the context limit on a GPU: accuracy per length x depth, retrieval heads, long-range mass; timed.

Run on a CUDA machine from the repository root:  PYTHONPATH=. python benchmarks/niah_gpu.py [--model smollm2-135m]
(the model comes from the cache at $WORKBENCH_HOME). Prints one table per model and a line per timing.
Expected: a few minutes per model on an H100 (prefill of <= 8 prompts per length; 32 greedy tokens each).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import workbench as wb
from workbench.retrieval.long_range import layout_agreement, long_range_mass
from workbench.retrieval.niah import run_niah
from workbench.retrieval.scoring import RETRIEVAL_THRESHOLD
from workbench.stimuli.niah import haystack_ids, niah_grid


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", action="append", default=None, help="default: smollm2-135m and gemma3-270m")
    parser.add_argument("--n-lengths", type=int, default=6)
    parser.add_argument("--max-length", type=int, default=None, help="default: the model's context limit (capped at 32768)")
    parser.add_argument("--needles", type=int, default=2)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("this benchmark needs a CUDA GPU")
    for name in args.model or ["smollm2-135m", "gemma3-270m"]:
        subject = wb.load(name, device="cuda")
        top = min(args.max_length or subject.context_limit, 32768) - 64
        lengths = sorted({int(x) for x in np.linspace(512, top, args.n_lengths)})
        grid = niah_grid(subject, lengths, [0, 25, 50, 75, 100], n_needles=args.needles, haystack="noise", seed=0)
        torch.cuda.synchronize()
        start = time.time()
        run = run_niah(subject, grid.tests, max_new_tokens=32, batch_size=4)
        torch.cuda.synchronize()
        elapsed = time.time() - start
        print(f"\n== {name}: {len(grid)} NIAH tests, lengths {lengths}, {elapsed:.1f} s")
        print(run.accuracy_grid().round(2).to_string())
        if run.table["correct"].any():
            scores = run.retrieval_scores()
            n = int((scores > RETRIEVAL_THRESHOLD).sum())
            order = np.argsort(-scores.ravel())[:8]
            tops = ", ".join(f"L{i // subject.n_heads}H{i % subject.n_heads} {scores.ravel()[i]:.2f}" for i in order)
            print(f"retrieval heads: {n} of {scores.size} ({100 * n / scores.size:.1f}%); top: {tops}")
        n_tokens = min(subject.context_limit, 16384)
        ids = torch.tensor([[subject.bos_token_id] + haystack_ids(subject, "random", n_tokens - 1, seed=0)])
        torch.cuda.synchronize()
        start = time.time()
        share = long_range_mass(subject, ids, window=128)
        torch.cuda.synchronize()
        print(f"long-range mass at {n_tokens} tokens (window 128): {time.time() - start:.2f} s; "
              f"heads > 0.1: {(share > 0.1).sum()} of {share.size}")
        if subject.sliding_window:
            print(layout_agreement(long_range_mass(subject, ids, window=subject.sliding_window), subject.layer_types))


if __name__ == "__main__":
    main()

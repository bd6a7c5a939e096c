"""Time the episodic analysis of one model: list capture (exact and streamed paths, checked equal), CMR fits of
every head (grid and refined), and one repeat-surprisal cell. Prints a short table.

    PYTHONPATH=. python benchmarks/episodic_timing.py [--model smollm2-135m] [--device cuda] [--items 50] [--batch 20] [--lists 20]

Expected: on a 2-core CPU, capture ~20-30 s for 20 x 101 tokens, grid fit of 270 heads < 1 s, refined fit ~40 s;
on a GPU the captures take well under a second and the fits dominate.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import workbench as wb
from workbench.episodic.capture import capture_lists
from workbench.episodic.cmr_fit import fit_cmr
from workbench.episodic.surprisal import noun_surprisal
from workbench.stimuli.lists import random_token_lists, verbatim_lists


def timed(fn):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--device", default=None)
    ap.add_argument("--items", type=int, default=50)
    ap.add_argument("--batch", type=int, default=20)
    ap.add_argument("--lists", type=int, default=20, help="prompts in the repeat-surprisal cell")
    args = ap.parse_args()
    subject = wb.load(args.model, device=args.device)
    lists = random_token_lists(subject, args.items, args.batch, seed=0)
    capture_lists(subject, random_token_lists(subject, 4, 1, seed=1))  # warm-up
    exact, t_exact = timed(lambda: capture_lists(subject, lists, method="exact"))
    streamed, t_streamed = timed(lambda: capture_lists(subject, lists, method="streamed"))
    diff = float(np.nanmax(np.abs(exact.scores - streamed.scores)))
    assert diff < 1e-2, f"streamed scores differ from exact by {diff}"
    curve = exact.lag_curve("scores", n_boot=1000)
    grid, t_grid = timed(lambda: fit_cmr(curve.mean, curve.lags))
    refined, t_refined = timed(lambda: fit_cmr(curve.mean, curve.lags, refine=True))
    assert (refined.distance <= grid.distance + 1e-12).all()
    verb = verbatim_lists(subject, 10, "repeated", "longest", n_lists=args.lists, seed=0)
    _, t_surprisal = timed(lambda: noun_surprisal(subject, verb))
    n = subject.n_layers * subject.n_heads
    rows = [("capture, exact", f"{args.batch} x {lists.input_ids.shape[1]} tokens", t_exact),
            ("capture, streamed", f"max |score diff| vs exact {diff:.1e}", t_streamed),
            ("CMR fit, grid", f"{n} heads; {int((grid.distance < 0.5).sum())} < 0.5, {int((grid.distance < 0.1).sum())} < 0.1", t_grid),
            ("CMR fit, refined", f"{n} heads; {int((refined.distance < 0.5).sum())} < 0.5", t_refined),
            ("repeat surprisal cell", f"{args.lists} prompts x {verb.input_ids.shape[1]} tokens", t_surprisal)]
    print(f"{subject.name} on {subject.device} ({torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU'})")
    print(f"{'step':<24}{'seconds':>10}  notes")
    for name, note, t in rows:
        print(f"{name:<24}{t:>10.2f}  {note}")


if __name__ == "__main__":
    main()

"""``workbench niah``: needle-in-a-haystack accuracy over lengths x depths, retrieval scores, optional head masking."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import executor_opts, validate


def _numbers(kind):
    def parse(text: str):
        try:
            return [kind(x) for x in text.replace(" ", "").split(",") if x]
        except ValueError:
            raise argparse.ArgumentTypeError(f"cannot read {text!r}: give comma-separated numbers, e.g. 256,512") from None
    return parse


def add_parser(sub) -> None:
    from ..models import DEFAULT_MODEL

    p = sub.add_parser("niah", help="needle-in-a-haystack accuracy grid and retrieval heads (Wu et al. 2024)")
    p.add_argument("--model", default=DEFAULT_MODEL, type=validate.model, help=f"registered name, local HF folder or hub id (default {DEFAULT_MODEL})")
    p.add_argument("--lengths", type=_numbers(int), default=[256, 512, 1024], help="context lengths in tokens (default 256,512,1024)")
    p.add_argument("--depths", type=_numbers(float), default=[0, 25, 50, 75, 100], help="needle depths in %% (default 0,25,50,75,100)")
    p.add_argument("--needles", type=validate.count(1), default=3, help="seeded needles per (length, depth) (default 3)")
    p.add_argument("--haystack", default="noise", type=validate.file_or("noise", "random"), help="'noise' (RULER), 'random' (seeded words/numbers) or a text file (default noise)")
    p.add_argument("--mask-heads", type=validate.heads, default=None,
                   help="heads to mask by query zeroing, e.g. L17H3,L18H6: also runs the grid with them masked")
    p.add_argument("--max-new-tokens", type=validate.count(1), default=50, help="greedy tokens per answer (default 50, as Wu et al.)")
    p.add_argument("--batch", type=validate.count(1), default=8, help="prompts per forward pass (default 8)")
    p.add_argument("--seed", type=int, default=0, help="seed of needles and haystack (default 0)")
    p.add_argument("--device", default=None, type=validate.device, help="cpu, cuda, cuda:1... (default: the GPU when present)")
    p.add_argument("--out", default=None, type=validate.output_folder, help="output folder (default runs/<model>/niah); a used one needs --resume")
    p.add_argument("--resume", action="store_true", help="continue the run in --out (same settings), skipping answered tests")
    executor_opts.add_arguments(p)
    p.set_defaults(func=run)


def run(args) -> int:
    import time

    from .. import load
    from ..atlas import Atlas
    from ..retrieval.figures import accuracy_grid_figure, retrieval_heatmap
    from ..retrieval.niah_folder import ANSWERS, run_niah_grid
    from ..retrieval.scoring import RETRIEVAL_THRESHOLD
    from ..stimuli.niah import niah_grid
    from ..viz import top_table, write_report

    started = time.time()
    executor = executor_opts.executor(args)
    subject = load(args.model, device=args.device)
    grid = niah_grid(subject, args.lengths, args.depths, n_needles=args.needles, haystack=args.haystack, seed=args.seed)
    out = Path(args.out or validate.at_run(validate.output_folder, str(Path("runs") / subject.name / "niah"), "--out"))
    conditions = {"intact": []}
    if args.mask_heads:
        conditions["masked"] = args.mask_heads
    runs = run_niah_grid(subject, grid, out, conditions, record=["intact"], resume=args.resume,
                         max_new_tokens=args.max_new_tokens, batch_size=args.batch, executor=executor)
    intact = runs["intact"]
    meta = {**subject.facts(), **{f"niah_{k}": v for k, v in grid.settings.items()}, **intact.settings,
            "accuracy": {name: run.accuracy for name, run in runs.items()}}
    sections = [("NIAH accuracy", [accuracy_grid_figure(intact.accuracy_grid(), "Intact: accuracy by depth x length")])]
    if args.mask_heads:
        sections[0][1].append(accuracy_grid_figure(runs["masked"].accuracy_grid(),
                                                   f"{len(args.mask_heads)} heads masked: accuracy by depth x length"))
    print(f"{subject.name}: NIAH accuracy {intact.accuracy:.3f} over {len(grid)} tests"
          + (f", {runs['masked'].accuracy:.3f} with {len(args.mask_heads)} heads masked" if args.mask_heads else ""))
    if intact.table["correct"].any():
        scores = intact.retrieval_scores()
        atlas = Atlas.for_model(subject.n_layers, subject.n_heads, subject.n_kv_heads, subject.layer_types, meta)
        atlas = atlas.with_scores("retrieval", intact.retrieval_items(), definition="Wu et al. 2024 retrieval score (copy-paste share "
                                  "of answer tokens, mean over correctly answered tests)", source="Wu et al. 2024",
                                  range="[0, 1]")
        atlas.save(out)
        top = atlas.top("retrieval", 10)  # with its bootstrap interval over the correct tests (docs/error-bars.md)
        shown = ["layer", "head"] + [c for c in ("retrieval", "retrieval_lo", "retrieval_hi") if c in top]
        sections.append(("Retrieval heads", [retrieval_heatmap(scores), top_table(top[shown])]))
        n = int((scores > RETRIEVAL_THRESHOLD).sum())
        print(f"  retrieval heads (> {RETRIEVAL_THRESHOLD}): {n} of {scores.size} ({100 * n / scores.size:.1f}%); top: "
              + ", ".join(f"L{r['layer']}H{r['head']} {r['retrieval']:.2f}" for _, r in top.head(5).iterrows()))
    else:
        print("  no test answered correctly: no retrieval scores (use shorter contexts or another haystack)")
    html = write_report(out / "niah.html", f"NIAH: {subject.name}", sections, meta)
    print(f"answers: {out / ANSWERS}\nreport: {html}\n({time.time() - started:.1f} s)")
    return 0

"""``workbench scan``: a head atlas of a model, written as Parquet + JSON + a self-contained HTML report."""

from __future__ import annotations

from pathlib import Path


def add_parser(sub) -> None:
    from ..detectors import DEFAULT_DETECTORS, available
    from ..models import DEFAULT_MODEL

    p = sub.add_parser("scan", help="score every head with the detectors and write an atlas + HTML report")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"registered name, local HF folder or hub id (default {DEFAULT_MODEL})")
    p.add_argument("--out", default=None, help="output folder (default runs/<model>)")
    p.add_argument("--detectors", default=",".join(DEFAULT_DETECTORS),
                   help=f"comma-separated, from: {', '.join(available())} (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of every stimulus (default 0)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1... (default: the GPU when present)")
    p.add_argument("--batch", type=int, default=10, help="repeated-token sequences (default 10)")
    p.add_argument("--seq-len", type=int, default=50, help="random tokens per repeat (default 50)")
    p.add_argument("--repeats", type=int, default=2, help="presentations of the random block (default 2)")
    p.add_argument("--capture", choices=("auto", "exact", "streamed"), default="auto",
                   help="exact patterns, streamed statistics (O(N) memory, for long contexts), or auto (default): exact "
                        "when its predicted peak fits half the free memory, else streamed in batch steps that fit")
    p.add_argument("--text", default=None, help="a text file whose paragraphs become the natural-text prompts of the sink detector")
    p.set_defaults(func=run)


def run(args) -> int:
    import time

    from .. import load
    from ..report import write_scan_report
    from ..scanning import scan
    from ..stimuli.text import paragraphs

    started = time.time()
    subject = load(args.model, device=args.device)
    settings = {"batch": args.batch, "seq_len": args.seq_len, "n_repeats": args.repeats, "capture": args.capture}
    if args.text:
        settings["sink_texts"] = paragraphs(args.text, min_chars=300)
    atlas = scan(subject, detectors=args.detectors, seed=args.seed, settings=settings)
    out = Path(args.out or Path("runs") / subject.name)
    atlas.save(out)
    html = write_scan_report(atlas, subject, out / "atlas.html")
    print(f"scanned {subject.n_total_heads} heads of {subject.name} in {time.time() - started:.1f} s")
    for name, stim in atlas.meta.get("stimuli", {}).items():
        if isinstance(stim, dict) and "reason" in stim.get("memory", {}):
            print(f"  capture of {name}: {stim['memory']['reason']}")
    for column in ("induction", "previous_token", "copying", "sink_rate"):
        if column in atlas.score_columns:
            top = atlas.top(column, 3)
            heads = ", ".join(f"L{r.layer}H{r.head} {getattr(r, column):.2f}" for r in top.itertuples())
            print(f"  top {column}: {heads}")
    print(f"atlas: {out / 'atlas.parquet'}")
    print(f"report: {html}")
    return 0

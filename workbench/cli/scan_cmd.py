"""``workbench scan``: a head atlas of a model, written as Parquet + JSON + a self-contained HTML report."""

from __future__ import annotations

from pathlib import Path

from . import validate


def add_parser(sub) -> None:
    from ..detectors import DEFAULT_DETECTORS, available
    from ..models import DEFAULT_MODEL

    p = sub.add_parser("scan", help="score every head with the detectors and write an atlas + HTML report")
    p.add_argument("--model", default=DEFAULT_MODEL, type=validate.model, help=f"registered name, local HF folder or hub id (default {DEFAULT_MODEL})")
    p.add_argument("--out", default=None, type=validate.output_folder, help="output folder (default runs/<model>)")
    p.add_argument("--detectors", default=",".join(DEFAULT_DETECTORS),
                   help=f"comma-separated, from: {', '.join(available())} (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of every stimulus (default 0)")
    p.add_argument("--device", default=None, type=validate.device, help="cpu, cuda, cuda:1... (default: the GPU when present)")
    p.add_argument("--batch", type=validate.count(1), default=10, help="repeated-token sequences (default 10)")
    p.add_argument("--seq-len", type=validate.count(2), default=50, help="random tokens per repeat (default 50)")
    p.add_argument("--repeats", type=validate.count(2), default=2, help="presentations of the random block (default 2)")
    p.add_argument("--capture", choices=("auto", "exact", "streamed"), default="auto",
                   help="exact patterns, streamed statistics (O(N) memory, for long contexts), or auto (default): exact "
                        "when its predicted peak fits half the free memory, else streamed in batch steps that fit")
    p.add_argument("--intervals", type=validate.count(0), default=1000,
                   help="bootstrap resamples for each score's confidence interval over its stimulus items "
                        "(<score>_lo/_hi; 0: none; default 1000)")
    p.add_argument("--interval-level", type=validate.fraction, default=0.95, help="confidence level of the intervals (default 0.95)")
    p.add_argument("--replicates", type=validate.count(2), default=None,
                   help="test-retest: scan K times with stimulus seeds seed..seed+K-1 and record, per score, the "
                        "Spearman between replicates and the heads whose class flips (atlas.json and the report); "
                        "each replicate's atlas goes to OUT/replicates/seed-S")
    p.add_argument("--text", default=None, type=validate.input_file, help="a text file whose paragraphs become the natural-text prompts of the sink detector")
    p.set_defaults(func=run)


def run(args) -> int:
    import time

    from .. import load
    from ..detectors import resolve
    from ..report import write_scan_report
    from ..scanning import scan
    from ..stimuli.text import paragraphs

    started = time.time()
    resolve(args.detectors)  # unknown names are refused before the model loads
    settings = {"batch": args.batch, "seq_len": args.seq_len, "n_repeats": args.repeats, "capture": args.capture,
                "interval_resamples": args.intervals, "interval_level": args.interval_level}
    if args.text:
        settings["sink_texts"] = paragraphs(args.text, min_chars=300)
    subject = load(args.model, device=args.device)
    out = Path(args.out or validate.at_run(validate.output_folder, str(Path("runs") / subject.name), "--out"))
    if args.replicates:
        from ..replicates import scan_replicates

        atlas = scan_replicates(subject, args.replicates, detectors=args.detectors, seed=args.seed,
                                settings=settings, out=out / "replicates").atlas
    else:
        atlas = scan(subject, detectors=args.detectors, seed=args.seed, settings=settings)
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
    for column, entry in atlas.meta.get("test_retest", {}).items():
        flips = f", {entry['n_flips']} heads flip class at {entry['threshold']:g}" if "n_flips" in entry else ""
        print(f"  test-retest {column}: Spearman {entry['spearman_mean']} (min {entry['spearman_min']}){flips}")
    print(f"atlas: {out / 'atlas.parquet'}")
    print(f"report: {html}")
    return 0

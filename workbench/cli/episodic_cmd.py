"""``workbench episodic``: CMR fits, temporal effects, ablations and repeat surprisal of one model into a folder."""

from __future__ import annotations

from pathlib import Path

from . import validate


def _ints(text: str) -> tuple[int, ...]:
    from ..errors import InputError

    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise InputError(f"expected comma-separated integers, got {text!r}") from None
    if not values:
        raise InputError(f"expected comma-separated integers, got {text!r}")
    return values


def _names(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def add_parser(sub) -> None:
    from ..models import DEFAULT_MODEL

    p = sub.add_parser("episodic", help="episodic memory in attention: CMR fits, lag-CRPs, ablations, repeat surprisal")
    p.add_argument("--model", default=DEFAULT_MODEL, type=validate.model, help=f"registered name, local HF folder or hub id (default {DEFAULT_MODEL})")
    p.add_argument("--out", default=None, type=validate.output_folder, help="output folder (default runs/<model>-episodic)")
    p.add_argument("--steps", default="heads,ablation,surprisal", help="some of heads,ablation,surprisal (default all)")
    p.add_argument("--seed", type=int, default=0, help="seed of every stimulus and random head set (default 0)")
    p.add_argument("--device", default=None, type=validate.device, help="cpu, cuda, cuda:1... (default: the GPU when present)")
    p.add_argument("--cmr-items", type=validate.count(2), default=50, help="random tokens per presentation for the CMR fits (default 50)")
    p.add_argument("--temporal-items", type=validate.count(2), default=40, help="frequent words per study list (default 40)")
    p.add_argument("--batch", type=validate.count(1), default=20, help="sequences per stimulus (default 20)")
    p.add_argument("--batch-size", type=validate.count(1), default=None, help="sequences per forward pass (default: all)")
    p.add_argument("--refine", action="store_true", help="refine each CMR grid fit continuously (slower)")
    p.add_argument("--top-k", type=validate.count(1), default=None, help="heads to ablate (default 10%% of all heads)")
    p.add_argument("--random-sets", type=validate.count(0), default=3, help="random head sets as ablation controls (default 3)")
    p.add_argument("--ablate-by", default="induction,cmr", help="rank heads for ablation by induction and/or cmr")
    p.add_argument("--ablation-lists", default="temporal,random",
                   help="ablation stimuli: temporal (frequent words, then permuted) and/or random (random tokens x 2)")
    p.add_argument("--icl-text", default=None, type=validate.input_file,
                   help="natural text file: also compare the ICL score (loss at token 500 - 50) under the ablations")
    p.add_argument("--icl-windows", type=validate.count(1), default=16, help="501-token windows of --icl-text (default 16)")
    p.add_argument("--lists", type=validate.count(1), default=20, help="prompts per repeat-surprisal cell (default 20)")
    p.add_argument("--list-lens", default="3,5,7,10", type=validate.counts(2), help="nouns per list (default 3,5,7,10)")
    p.add_argument("--intervening", default="short,longest",
                   help="intervening texts: names from data/episodic/intervening.jsonl (default short,longest)")
    p.add_argument("--no-scramble", action="store_true", help="skip the scrambled-intervening-text control")
    p.set_defaults(func=run)


def run(args) -> int:
    import time

    from .. import load
    from ..episodic.run import run_episodic

    started = time.time()
    subject = load(args.model, device=args.device)
    out = Path(args.out or validate.at_run(validate.output_folder, str(Path("runs") / f"{subject.name}-episodic"), "--out"))
    settings = {"cmr_items": args.cmr_items, "cmr_batch": args.batch, "temporal_items": args.temporal_items,
                "temporal_batch": args.batch, "refine": args.refine, "batch_size": args.batch_size}
    result = run_episodic(subject, out, seed=args.seed, settings=settings, steps=_names(args.steps),
                          top_k=args.top_k, n_random=args.random_sets, ablate_by=_names(args.ablate_by),
                          ablation_lists=_names(args.ablation_lists),
                          list_lens=_ints(args.list_lens), intervening=_names(args.intervening), n_lists=args.lists,
                          scramble=not args.no_scramble, icl_text=args.icl_text, icl_windows=args.icl_windows)
    print(f"episodic analysis of {subject.name} in {time.time() - started:.1f} s")
    if result.summary is not None:
        for r in result.summary.itertuples():
            print(f"  [{r.section}] {r.metric}: {r.value}" + (f" ({r.note})" if r.note else ""))
    print(f"results: {out}")
    print(f"report: {out / 'episodic.html'}")
    return 0

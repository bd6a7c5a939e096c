"""``workbench sweep``: ablate every head (or groups / pairs) on a task, finished cells written in chunks (here or on Ray);
``--screen attribution --verify K`` estimates every cell first and runs the exact ablation on the chosen ones."""

from __future__ import annotations

from . import executor_opts, validate


def add_parser(sub) -> None:
    from ..models import DEFAULT_MODEL
    from ..sweeps.ablations import ABLATIONS
    from ..tasks import METRICS, TASKS

    p = sub.add_parser("sweep", help="ablate heads on a task and record the metric per cell (resumable)")
    p.add_argument("--model", default=DEFAULT_MODEL, type=validate.model, help=f"registered name, local HF folder or hub id (default {DEFAULT_MODEL})")
    p.add_argument("--task", required=True, choices=sorted(TASKS), help="task whose kept prompts are scored")
    p.add_argument("--intervention", default="zero", choices=sorted(ABLATIONS), help="what happens to a cell's heads (default zero)")
    p.add_argument("--metric", default=None, help=f"comma-separated, from: {', '.join(METRICS)} (default: the task's)")
    p.add_argument("--out", required=True, type=validate.output_folder, help="sweep folder (sweep.json + parts/*.parquet + sweep.html)")
    p.add_argument("--resume", action="store_true", help="continue a sweep in --out, skipping finished cells")
    p.add_argument("--heads", nargs="+", default=None, type=validate.head_group, metavar="LxHy",
                   help="cells to sweep, e.g. L17H3 L18H6 L17H3+L18H6 (default: every head, or every layer / KV group / pair per --cells)")
    p.add_argument("--cells", default="heads", choices=("heads", "layers", "kv-groups", "pairs"),
                   help="heads: one cell per head; layers / kv-groups: all heads of a layer / KV group together; "
                        "pairs: every pair of the --heads given (default heads)")
    p.add_argument("--prompts", type=validate.count(1), default=64, help="induction: repeated-token prompts (default 64)")
    p.add_argument("--seq-len", type=validate.count(2), default=128, help="induction: random tokens per repeat (default 128)")
    p.add_argument("--no-filter", action="store_true", help="keep the items the model gets wrong too")
    p.add_argument("--seed", type=int, default=0, help="stimulus and resample seed (default 0)")
    p.add_argument("--max-rows", type=validate.count(1), default=None, help="rows per forward pass (default: from free memory)")
    p.add_argument("--device", default=None, type=validate.device, help="cpu, cuda, cuda:1... (default: the GPU when present)")
    p.add_argument("--screen", default=None, choices=("attribution",),
                   help="estimate every cell first by attribution patching (AtP/AtP*: one forward + backward per prompt chunk)")
    p.add_argument("--verify", type=validate.count(1), default=None, metavar="K",
                   help="with --screen: run the exact intervention on the K cells with the largest |estimate| and on K random others")
    p.add_argument("--atp-fixes", default="qk", type=validate.atp_fixes,
                   help="AtP* fixes of the screen: qk (recompute attention for query-side ablations), graddrop "
                        "(one extra partial backward per layer), qk,graddrop, or none (default qk)")
    executor_opts.add_arguments(p)
    p.set_defaults(func=run)


def run(args) -> int:
    import time

    from .. import load
    from ..errors import InputError
    from ..sweeps import head_pairs, kv_groups, layer_groups, parse_heads, run_sweep, single_heads
    from ..sweeps.report import screen_summary, screen_table, sweep_report, top_cells
    from ..tasks import build_task

    if args.verify and not args.screen:
        raise InputError("--verify needs --screen attribution (the screen chooses the cells to verify)")
    started = time.time()
    executor = executor_opts.executor(args)
    subject = load(args.model, device=args.device)
    options = {"filter": not args.no_filter}
    if args.task == "induction":
        options.update(n_prompts=args.prompts, seq_len=args.seq_len, seed=args.seed)
    task = build_task(subject, args.task, **options)
    print(task.summary())
    given = [parse_heads(text) for text in args.heads] if args.heads else None
    if args.cells == "pairs":
        if not given:
            raise InputError("--cells pairs needs the heads to pair: --heads L17H3 L18H6 ...")
        cells = head_pairs([h for cell in given for h in cell])
    elif args.cells == "layers":
        cells = layer_groups(subject)
    elif args.cells == "kv-groups":
        cells = kv_groups(subject)
    else:
        cells = given or single_heads(subject)
    metrics = args.metric.split(",") if args.metric else None
    df = run_sweep(subject, task, args.out, intervention=args.intervention, metrics=metrics, cells=cells,
                   resume=args.resume, seed=args.seed, max_rows=args.max_rows, screen=args.screen,
                   fixes=args.atp_fixes, verify=args.verify or 0, executor=executor)
    html = sweep_report(args.out)
    print(f"swept {len(cells)} cells in {time.time() - started:.1f} s")
    if args.screen:
        table = screen_table(df)
        print(f"top 10 cells by |estimate| ({df.attrs['sweep']['screen']['method']}):")
        print(table.reindex(table["estimate"].abs().sort_values(ascending=False, kind="stable").index)
              .head(10)[["heads", "estimate", "exact", "verify"]].to_string(index=False))
        if args.verify:
            print(", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in screen_summary(table).items()))
    if (df["method"] == "exact").any():
        print(top_cells(df, 10, method="exact").to_string(index=False))
    print(f"sweep: {args.out}/parts ({len(df)} rows)\nreport: {html}")
    return 0

"""``workbench pattern``: one or more heads' attention on a prompt, written as a self-contained HTML figure."""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError


def parse_head(text: str) -> tuple[int, int]:
    """'18.6', 'L18H6' or '18,6' -> (18, 6)."""
    cleaned = text.upper().replace("L", "").replace("H", ".").replace(",", ".")
    parts = [p for p in cleaned.split(".") if p]
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise InputError(f"cannot read head {text!r}: write LAYER.HEAD, e.g. 18.6 or L18H6")
    return int(parts[0]), int(parts[1])


def add_parser(sub) -> None:
    from ..models import DEFAULT_MODEL

    p = sub.add_parser("pattern", help="plot heads' attention patterns on a prompt (HTML)")
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--prompt", help="the text to run")
    p.add_argument("--prompt-file", help="read the prompt from a file")
    p.add_argument("--head", action="append", required=True, type=parse_head, help="LAYER.HEAD; repeat for several")
    p.add_argument("--out", default="pattern.html", help="HTML file to write (default pattern.html)")
    p.add_argument("--device", default=None)
    p.set_defaults(func=run)


def run(args) -> int:
    from .. import load
    from ..patterns import capture
    from ..stimuli.text import read_text
    from ..viz.heads import pattern_figure
    from ..viz.report import write_report

    if (args.prompt is None) == (args.prompt_file is None):
        raise InputError("give the prompt as --prompt TEXT or --prompt-file FILE")
    text = args.prompt if args.prompt is not None else read_text(args.prompt_file)
    subject = load(args.model, device=args.device)
    ids = subject.encode(text)
    cap = capture(subject, ids, heads=args.head)
    tokens = subject.to_str_tokens(ids)
    figures = [pattern_figure(cap.pattern(l, h)[0].numpy(), tokens, f"{subject.name} L{l}H{h}") for l, h in args.head]
    path = write_report(Path(args.out), f"Attention patterns: {subject.name}", [("Patterns", figures)],
                        {**subject.facts(), "prompt_tokens": len(tokens)})
    print(f"pattern: {path}")
    return 0

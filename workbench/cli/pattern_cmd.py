"""``workbench pattern``: one or more heads' attention on a prompt, written as a self-contained HTML figure."""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from ..inputs import parse_head  # noqa: F401  (re-exported: the one head parser lives in workbench.inputs)
from . import validate


def add_parser(sub) -> None:
    from ..models import DEFAULT_MODEL

    p = sub.add_parser("pattern", help="plot heads' attention patterns on a prompt (HTML)")
    p.add_argument("--model", default=DEFAULT_MODEL, type=validate.model,
                   help=f"registered name, local HF folder or hub id (default {DEFAULT_MODEL})")
    p.add_argument("--prompt", help="the text to run")
    p.add_argument("--prompt-file", type=validate.input_file, help="read the prompt from a UTF-8 text file")
    p.add_argument("--head", action="append", required=True, type=validate.head,
                   help="LAYER.HEAD or LxHy, e.g. 18.6 or L18H6; repeat for several")
    p.add_argument("--out", default="pattern.html", type=validate.output_file, help="HTML file to write (default pattern.html)")
    p.add_argument("--device", default=None, type=validate.device, help="cpu, cuda, cuda:1... (default: the GPU when present)")
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

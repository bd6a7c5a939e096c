"""A single self-contained HTML report: plotly.js inline once, a metadata table, then sections of prose and figures.

The metadata table always lists the run's provenance first (model, weights note, stimuli, seeds,
versions, wall time; from the meta keys ``model``, ``weights_note``, ``stimuli``, ``seeds`` or
``seed``, ``versions``, ``wall_time_s``), marking what was not recorded, then every other key
except ``columns`` (column descriptions belong in the sections).
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Sequence

import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from ..errors import InputError
from ..io import atomic_write_text

PROVENANCE = (  # (row label, meta keys tried in order)
    ("model", ("model",)),
    ("weights", ("weights_note",)),
    ("stimuli", ("stimuli",)),
    ("seeds", ("seeds", "seed")),
    ("versions", ("versions",)),
    ("wall time (s)", ("wall_time_s",)),
)
HIDDEN_KEYS = {"columns"}
LONG_VALUE_CHARS = 160  # longer values are folded into a <details> element

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1150px;
       padding: 0 1em; color: #1d232b; line-height: 1.45; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #d5dbe3; }
table.meta { border-collapse: collapse; font-size: 0.9em; }
table.meta th, table.meta td { text-align: left; vertical-align: top; padding: 0.25em 0.8em;
                               border-bottom: 1px solid #e6e9ee; }
table.meta th { white-space: nowrap; color: #4a5563; font-weight: 600; }
.missing { color: #a33; font-style: italic; }
pre { margin: 0.3em 0; white-space: pre-wrap; font-size: 0.92em; }
.figure { margin: 1em 0; }
"""


def _value_html(value) -> str:
    """A metadata value as HTML: short values inline, long ones (or nested ones) folded as JSON."""
    text = value if isinstance(value, str) else json.dumps(value, indent=1, sort_keys=True, default=str)
    if len(text) <= LONG_VALUE_CHARS and "\n" not in text:
        return html.escape(text)
    summary = " ".join(text.split())[:100]
    return f"<details><summary>{html.escape(summary)}…</summary><pre>{html.escape(text)}</pre></details>"


def metadata_table(meta: dict) -> str:
    """The metadata as an HTML table: the provenance rows first (flagging missing ones), then the other keys."""
    rows, shown = [], set(HIDDEN_KEYS)
    for label, keys in PROVENANCE:
        key = next((k for k in keys if meta.get(k) is not None), None)
        shown.update(keys)
        cell = '<span class="missing">not recorded</span>' if key is None else _value_html(meta[key])
        rows.append(f"<tr><th>{html.escape(label)}</th><td>{cell}</td></tr>")
    for key, value in meta.items():
        if key not in shown:
            rows.append(f"<tr><th>{html.escape(str(key))}</th><td>{_value_html(value)}</td></tr>")
    return '<table class="meta">' + "".join(rows) + "</table>"


def _prose_html(text: str) -> str:
    """Plain text as escaped HTML paragraphs (blank lines separate paragraphs)."""
    paragraphs = [p.strip() for p in text.split("\n\n") if p.strip()]
    return "".join(f"<p>{html.escape(p)}</p>" for p in paragraphs)


def _section_html(index: int, section) -> str:
    """One section as HTML: a heading, then its prose paragraphs and figures in order."""
    heading, body = section if isinstance(section, (tuple, list)) and len(section) == 2 else (None, None)
    items = [body] if isinstance(body, (str, go.Figure)) else body
    if not isinstance(heading, str) or not isinstance(items, (list, tuple)):
        raise InputError(f"section {index} must be a pair (heading, text or a list of figures and text), "
                         f"got {type(section).__name__} {str(section)[:80]!r}")
    parts = [f"<h2>{html.escape(heading)}</h2>"]
    for j, item in enumerate(items):
        if isinstance(item, str):
            parts.append(_prose_html(item))
        elif isinstance(item, go.Figure):
            div = item.to_html(full_html=False, include_plotlyjs=False, div_id=f"figure-{index}-{j}",
                               config={"displaylogo": False})
            parts.append(f'<div class="figure">{div}</div>')
        else:
            raise InputError(f"section {heading!r} item {j} is a {type(item).__name__}: give plotly figures or text")
    return f"<section>{''.join(parts)}</section>"


def write_report(path: str | Path, title: str, sections: Sequence[tuple[str, object]], meta: dict) -> Path:
    """Write ``sections`` (heading, text | [figures and text]) under a metadata table as one offline HTML file."""
    if not isinstance(meta, dict):
        raise InputError(f"meta must be a dict of run metadata, got {type(meta).__name__}")
    body = "".join(_section_html(i, section) for i, section in enumerate(sections))
    page = (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title><style>{STYLE}</style>"
        # plotly.js inline, once: the report opens offline and figures share the one copy
        "<script type=\"text/javascript\">window.PlotlyConfig = {MathJaxConfig: 'local'};</script>"
        f"<script type=\"text/javascript\">{get_plotlyjs()}</script></head><body>"
        f"<h1>{html.escape(title)}</h1>{metadata_table(meta)}{body}</body></html>\n"
    )
    return atomic_write_text(path, page)

"""Figures of per-head numbers and of one head's attention: pure functions over arrays (no scores computed here)."""

from __future__ import annotations

import html
import math
from typing import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from ..errors import InputError

MAX_TICK_LABEL_TOKENS = 40  # above this many tokens a pattern's axes show positions instead of token text
MAX_TICK_LABEL_CHARS = 10


def format_value(value) -> str:
    """A number as short text for hovers and tables: 3 significant digits, 'n/a' for NaN or None."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, (float, np.floating)):
        return f"{value:.3g}"
    return str(value)


def format_interval(lo, hi) -> str:
    """An interval as short text: '[0.481, 0.562]', or '' when either bound is missing."""
    if any(v is None or (isinstance(v, (float, np.floating)) and math.isnan(v)) for v in (lo, hi)):
        return ""
    return f"[{format_value(lo)}, {format_value(hi)}]"


def interval_figure(labels: Sequence[str], values, lo, hi, title: str, name: str = "score") -> go.Figure:
    """Points with error bars, one row per label (first at the top): ``values`` with their [lo, hi] intervals."""
    v, low, high = (np.asarray(x, dtype=np.float64) for x in (values, lo, hi))
    labels = [str(x) for x in labels]
    if not (v.shape == low.shape == high.shape == (len(labels),)) or not labels:
        raise InputError(f"interval_figure needs one value, lo and hi per label ({len(labels)} labels), got shapes "
                         f"{v.shape}, {low.shape}, {high.shape}")
    text = [f"{lab}: {format_value(x)} {format_interval(a, b)}" for lab, x, a, b in zip(labels, v, low, high)]
    point = go.Scatter(x=v, y=labels, mode="markers", marker={"size": 9, "color": "#1f77b4"}, text=text,
                       hovertemplate="%{text}<extra></extra>",
                       error_x={"type": "data", "symmetric": False, "array": high - v, "arrayminus": v - low,
                                "thickness": 1.5, "width": 4})
    fig = go.Figure(point)
    fig.update_layout(title={"text": title}, height=_clamp(120 + 26 * len(labels), 260, 900), width=640,
                      margin={"l": 80, "r": 20, "t": 60, "b": 50}, showlegend=False)
    fig.update_xaxes(title_text=f"{name} (point and interval)")
    fig.update_yaxes(autorange="reversed", type="category")
    return fig


def _clamp(value: float, lo: float, hi: float) -> int:
    return int(min(max(value, lo), hi))


def head_heatmap(matrix, title: str, colorscale: str = "Viridis", zmid: float | None = None,
                 hover=None, colorbar_title: str | None = None) -> go.Figure:
    """A layer x head heatmap of ``matrix`` (layers as rows, layer 0 at top); hover 'L5H1: 0.93' plus ``hover[l][h]``."""
    z = np.asarray(matrix, dtype=np.float64)
    if z.ndim != 2 or 0 in z.shape:
        raise InputError(f"head_heatmap needs a non-empty (n_layers, n_heads) matrix, got shape {z.shape}")
    n_layers, n_heads = z.shape
    extra = None if hover is None else np.asarray(hover, dtype=object)
    if extra is not None and extra.shape != z.shape:
        raise InputError(f"hover text has shape {extra.shape}; give one string per head, shape {z.shape}")
    text = [[f"L{l}H{h}: {format_value(z[l, h])}" + ("" if extra is None else f"<br>{extra[l, h]}")
             for h in range(n_heads)] for l in range(n_layers)]
    heatmap = go.Heatmap(z=z, x=list(range(n_heads)), y=list(range(n_layers)), text=text,
                         hovertemplate="%{text}<extra></extra>", colorscale=colorscale, zmid=zmid,
                         colorbar={"title": {"text": colorbar_title or ""}}, hoverongaps=True)
    fig = go.Figure(heatmap)
    fig.update_layout(title={"text": title}, width=_clamp(200 + 48 * n_heads, 440, 1100),
                      height=_clamp(160 + 20 * n_layers, 340, 1000), margin={"l": 60, "r": 20, "t": 60, "b": 50})
    fig.update_xaxes(title_text="head", dtick=1 if n_heads <= 40 else None, showgrid=False)
    fig.update_yaxes(title_text="layer", autorange="reversed", dtick=1 if n_layers <= 40 else None, showgrid=False)
    return fig


def top_table(df: pd.DataFrame, title: str | None = None) -> go.Figure:
    """A plotly Table of ``df`` (every column, in order), floats shown with 3 significant digits."""
    if not isinstance(df, pd.DataFrame):
        raise InputError(f"top_table needs a pandas DataFrame, got {type(df).__name__}")
    cells = [[format_value(v) for v in df[c].tolist()] for c in df.columns]
    table = go.Table(header={"values": [str(c) for c in df.columns], "align": "left", "fill_color": "#e8ecf2"},
                     cells={"values": cells, "align": "left"})
    fig = go.Figure(table)
    fig.update_layout(title={"text": title or ""}, height=_clamp(110 + 26 * (len(df) + 1), 200, 900),
                      margin={"l": 10, "r": 10, "t": 50 if title else 10, "b": 10})
    return fig


def _token_text(token: str) -> str:
    """A token as hover-safe text: quoted, newlines and tabs visible, HTML special characters escaped."""
    return html.escape(repr(str(token)), quote=False)


def pattern_figure(pattern, tokens: Sequence[str], title: str, rows: Sequence[int] | None = None) -> go.Figure:
    """One head's attention (queries as rows, keys as columns) with token text on hover; ``rows`` = query positions."""
    p = np.asarray(pattern, dtype=np.float32)
    if p.ndim != 2 or 0 in p.shape:
        raise InputError(f"pattern_figure needs one head's (n_queries, n_keys) pattern, got shape {p.shape}: "
                         "select a batch item and a head first, e.g. cap.pattern(layer, head)[0]")
    n_q, n_k = p.shape
    if len(tokens) != n_k:
        raise InputError(f"the pattern has {n_k} keys but {len(tokens)} tokens were given: pass the tokens of the "
                         "same sequence (e.g. subject.to_str_tokens(ids))")
    if rows is None:
        if n_q != n_k:
            raise InputError(f"the pattern has {n_q} query rows and {n_k} keys: pass rows=[...], the query "
                             "positions it was captured at")
        rows = range(n_k)
    rows = [int(r) for r in rows]
    if len(rows) != n_q or any(not 0 <= r < n_k for r in rows):
        raise InputError(f"rows must give {n_q} query positions in 0..{n_k - 1}")
    labels = [f"{i} {_token_text(t)}" for i, t in enumerate(tokens)]  # unique category per position
    heatmap = go.Heatmap(z=p, x=labels, y=[labels[r] for r in rows], zmin=0.0, zmax=1.0, colorscale="Blues",
                         colorbar={"title": {"text": "attention"}},
                         hovertemplate="query %{y}<br>key %{x}<br>attention %{z:.3f}<extra></extra>")
    fig = go.Figure(heatmap)
    side = _clamp(240 + 14 * max(n_q, n_k), 460, 820)
    fig.update_layout(title={"text": title}, width=side + 80, height=side, margin={"l": 60, "r": 20, "t": 60, "b": 60})
    fig.update_xaxes(title_text="key", **_ticks(labels, range(n_k), tokens))
    fig.update_yaxes(title_text="query", autorange="reversed", **_ticks(labels, rows, tokens))
    return fig


def _ticks(labels: list[str], positions: Sequence[int], tokens: Sequence[str]) -> dict:
    """Axis ticks: every token's text when few and short, else about 12 position numbers."""
    positions = list(positions)
    short = all(len(str(tokens[i])) <= MAX_TICK_LABEL_CHARS for i in positions)
    if len(positions) <= MAX_TICK_LABEL_TOKENS and short:
        chosen, text = positions, [html.escape(repr(str(tokens[i]))[1:-1], quote=False) for i in positions]
    else:
        step = max(1, math.ceil(len(positions) / 12))
        chosen = positions[::step]
        text = [str(i) for i in chosen]
    return {"tickmode": "array", "tickvals": [labels[i] for i in chosen], "ticktext": text}


ROLE_COLORS = {"top": "#c0392b", "calibration": "#2471a3"}


def estimate_scatter(table: pd.DataFrame, title: str) -> go.Figure:
    """Estimated vs exact effect of the verified cells of a screen (``table``: heads, estimate, exact, verify), one colour per role, with the line exact = estimate."""
    missing = {"heads", "estimate", "exact", "verify"} - set(table.columns)
    if missing:
        raise InputError(f"estimate_scatter needs columns heads, estimate, exact, verify; missing {', '.join(sorted(missing))}")
    done = table[table["exact"].notna()]
    fig = go.Figure()
    for role, part in done.groupby("verify", sort=True):
        fig.add_trace(go.Scatter(x=part["estimate"], y=part["exact"], mode="markers", name=str(role) or "verified",
                                 text=part["heads"], marker={"color": ROLE_COLORS.get(str(role), "#555555"), "size": 8},
                                 hovertemplate="%{text}: estimate %{x:.3g}, exact %{y:.3g}<extra></extra>"))
    values = np.concatenate([done["estimate"].to_numpy(float), done["exact"].to_numpy(float)]) if len(done) else np.zeros(1)
    lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
    fig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", name="exact = estimate",
                             line={"color": "#999999", "dash": "dot"}, hoverinfo="skip"))
    fig.update_layout(title={"text": title}, width=560, height=460, margin={"l": 60, "r": 20, "t": 60, "b": 50})
    fig.update_xaxes(title_text="estimate")
    fig.update_yaxes(title_text="exact effect")
    return fig

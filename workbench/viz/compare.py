"""Figures comparing models' atlases by normalised depth (tables from ``workbench.comparison``). Views only."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from ..errors import InputError

COLORS = qualitative.Plotly


def _color(i: int) -> str:
    return COLORS[i % len(COLORS)]


def depth_comparison_figure(summary: pd.DataFrame, heads: pd.DataFrame, models: Sequence[str],
                            head_types: Sequence[str], title: str | None = None) -> go.Figure:
    """Left: share of each model's heads per type (bars, 'count/n' on hover). Right: normalised depth (0 = first
    layer, 1 = last) of every head of each type, a box with all points per model, models side by side."""
    if not models or not head_types:
        raise InputError("give at least one model and one head type to draw")
    fig = make_subplots(rows=1, cols=2, column_widths=[0.38, 0.62], horizontal_spacing=0.08,
                        subplot_titles=("share of heads", "normalised depth (layer / (n_layers - 1))"))
    for i, model in enumerate(models):
        s = summary[summary["model"] == model].set_index("head_type").reindex(list(head_types))
        text = [("not measured" if not bool(m) else f"{int(c)}/{int(n)}")
                for m, c, n in zip(s["measured"].fillna(False), s["count"].fillna(0), s["n_heads"].fillna(0))]
        fig.add_trace(go.Bar(x=list(head_types), y=s["share"].to_numpy(dtype=float), name=model, legendgroup=model,
                             marker_color=_color(i), text=text, textposition="outside", offsetgroup=str(i),
                             hovertemplate=f"{model}<br>%{{x}}: %{{text}} heads (%{{y:.1%}})<extra></extra>"),
                      row=1, col=1)
        h = heads[heads["model"] == model]
        hover = [f"{model} L{l}H{hd} ({lt})<br>{t}: {v:.3g}<br>depth {d:.2f}"
                 for l, hd, lt, t, v, d in zip(h["layer"], h["head"], h["layer_type"], h["head_type"], h["value"],
                                                h["depth"])]
        fig.add_trace(go.Box(x=h["head_type"].tolist(), y=h["depth"].to_numpy(dtype=float), name=model,
                             legendgroup=model, showlegend=False, marker_color=_color(i), offsetgroup=str(i),
                             boxpoints="all", jitter=0.4, pointpos=0, text=hover, hoverinfo="text"),
                      row=1, col=2)
    fig.update_layout(title={"text": title or "Head types by normalised depth: " + " vs ".join(models)},
                      barmode="group", boxmode="group", height=520, width=1150, legend={"orientation": "h", "y": -0.15})
    fig.update_xaxes(categoryorder="array", categoryarray=list(head_types))
    fig.update_yaxes(title_text="share of the model's heads", tickformat=".0%", row=1, col=1)
    fig.update_yaxes(title_text="first layer (0) to last layer (1)", range=[-0.05, 1.05], row=1, col=2)
    return fig


def depth_profile_figure(profiles: pd.DataFrame, columns: Sequence[str], models: Sequence[str], stat: str = "mean",
                         title: str | None = None) -> go.Figure:
    """One panel per column: its per-layer ``stat`` (mean or max over the layer's heads) against normalised depth,
    one line per model; global (full-attention) layers of a model with mixed layer types drawn as larger markers."""
    if stat not in ("mean", "max"):
        raise InputError(f"stat must be 'mean' or 'max', got {stat!r}")
    columns = list(columns)
    missing = [c for c in columns if c not in set(profiles["column"])]
    if not columns or missing:
        raise InputError(f"no profile for column(s) {missing or '(none given)'}: choose from "
                         f"{', '.join(sorted(set(profiles['column'])))}")
    fig = make_subplots(rows=1, cols=len(columns), subplot_titles=columns, shared_xaxes=True,
                        horizontal_spacing=0.06)
    for i, model in enumerate(models):
        for j, column in enumerate(columns):
            p = profiles[(profiles["model"] == model) & (profiles["column"] == column)].sort_values("layer")
            mixed = p["layer_type"].nunique() > 1
            size = np.where(mixed & (p["layer_type"] == "full"), 11, 6)
            fig.add_trace(go.Scatter(x=p["depth"], y=p[stat], mode="lines+markers", name=model, legendgroup=model,
                                     showlegend=j == 0, line={"color": _color(i)}, marker={"size": size},
                                     text=[f"{model} layer {l} ({t})" for l, t in zip(p["layer"], p["layer_type"])],
                                     hovertemplate=f"%{{text}}<br>{stat} {column}: %{{y:.3g}}<extra></extra>"),
                          row=1, col=j + 1)
    fig.update_xaxes(title_text="normalised depth", range=[-0.03, 1.03])
    fig.update_layout(title={"text": title or f"Per-layer {stat} by normalised depth"}, height=380,
                      width=max(500, 330 * len(columns)), legend={"orientation": "h", "y": -0.25})
    return fig

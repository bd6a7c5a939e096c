"""Figures of the retrieval analysis: pure views over computed results (no scores computed here)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from ..errors import InputError
from ..viz import head_heatmap
from .scoring import RETRIEVAL_THRESHOLD


def retrieval_heatmap(scores, threshold: float = RETRIEVAL_THRESHOLD,
                      title: str = "Retrieval score (Wu et al. 2024)") -> go.Figure:
    """Layer x head heatmap of retrieval scores; hover says whether the head is a retrieval head (> threshold)."""
    s = np.asarray(scores, dtype=np.float64)
    hover = np.where(s > threshold, f"retrieval head (> {threshold})", "")
    n = int((s > threshold).sum())
    return head_heatmap(s, f"{title}: {n} of {s.size} heads > {threshold}", hover=hover, colorbar_title="score")


def accuracy_grid_figure(grid: pd.DataFrame, title: str = "NIAH accuracy by needle depth and context length") -> go.Figure:
    """Heatmap of accuracy: needle depth (rows, %) x context length (columns, tokens), from NiahRun.accuracy_grid()."""
    if not isinstance(grid, pd.DataFrame) or grid.empty:
        raise InputError("accuracy_grid_figure needs the non-empty table of NiahRun.accuracy_grid()")
    z = grid.to_numpy(dtype=np.float64)
    fig = go.Figure(go.Heatmap(z=z, x=[str(c) for c in grid.columns], y=[f"{d:g}%" for d in grid.index],
                               zmin=0, zmax=1, colorscale="RdYlGn", colorbar={"title": {"text": "accuracy"}},
                               text=np.vectorize(lambda v: f"{v:.2f}")(z), texttemplate="%{text}",
                               hovertemplate="length %{x}, depth %{y}: %{z:.2f}<extra></extra>"))
    fig.update_layout(title={"text": title}, height=max(300, 60 + 40 * len(grid.index)),
                      width=max(420, 160 + 70 * len(grid.columns)))
    fig.update_xaxes(title_text="context length (tokens)", type="category")
    fig.update_yaxes(title_text="needle depth", autorange="reversed", type="category")
    return fig


def masking_figure(summary: pd.DataFrame, title: str = "NIAH accuracy with heads masked (query zeroing)") -> go.Figure:
    """Bars per family: intact, top-k masked, and k random heads masked (mean, whiskers = min..max over draws); from MaskingResult.summary()."""
    need = {"family", "k", "intact", "top_k", "random_mean", "random_min", "random_max", "n_random"}
    if not isinstance(summary, pd.DataFrame) or not need <= set(summary.columns):
        raise InputError(f"masking_figure needs MaskingResult.summary() with columns {sorted(need)}")
    x = [f"{r.family} (k={r.k})" for r in summary.itertuples()]
    fig = go.Figure([
        go.Bar(x=x, y=summary["intact"], name="intact", marker_color="#7f7f7f"),
        go.Bar(x=x, y=summary["top_k"], name="top-k heads masked", marker_color="#d62728"),
        go.Bar(x=x, y=summary["random_mean"], name="k random heads masked (mean; min-max)", marker_color="#1f77b4",
               error_y={"type": "data", "symmetric": False, "array": summary["random_max"] - summary["random_mean"],
                        "arrayminus": summary["random_mean"] - summary["random_min"]}),
    ])
    fig.update_layout(title={"text": title}, barmode="group", yaxis={"title": "NIAH accuracy", "range": [0, 1.05]},
                      height=420, legend={"orientation": "h", "y": -0.2})
    return fig

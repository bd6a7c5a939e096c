"""Figures of a training run: loss curves with the phase change marked, per-head score trajectories, and a head's
lag curve over training. Pure functions over the run's tables (``workbench.toy.trajectory.Run``); no scores here."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import sample_colorscale

from ..errors import InputError
from .heads import format_value


def _need(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if frame.empty or missing:
        raise InputError(f"{what} needs a table with columns {', '.join(columns)}"
                         + (f" (missing: {', '.join(missing)})" if missing and not frame.empty else " (it is empty)"))


def loss_curve(log: pd.DataFrame, columns: Sequence[str] | None = None, phase: dict | None = None,
               evals: pd.DataFrame | None = None, smooth: int = 25, title: str = "training loss") -> go.Figure:
    """Per-step training losses (centred rolling mean over ``smooth`` steps, for display), held-out losses at the
    checkpoints as markers, and the phase change (``phase["step"]``) as a dashed line."""
    _need(log, ["step"], "loss_curve")
    columns = list(columns) if columns is not None else [c for c in log.columns if c.startswith("loss")]
    _need(log, columns, "loss_curve")
    fig = go.Figure()
    colors = sample_colorscale("Plotly3", np.linspace(0.1, 0.8, max(len(columns), 2)).tolist())
    for color, col in zip(colors, columns):
        y = log[col].rolling(max(1, smooth), center=True, min_periods=1).mean()
        fig.add_trace(go.Scatter(x=log["step"], y=y, mode="lines", name=f"train {col}", line={"color": color},
                                 hovertemplate=f"step %{{x}}<br>{col}: %{{y:.3f}}<extra></extra>"))
        ev = f"eval_{col}"
        if evals is not None and not evals.empty and ev in evals.columns:
            fig.add_trace(go.Scatter(x=evals["step"], y=evals[ev], mode="markers", name=f"held-out {col}",
                                     marker={"color": color, "symbol": "circle-open", "size": 8},
                                     hovertemplate=f"checkpoint %{{x}}<br>held-out {col}: %{{y:.3f}}<extra></extra>"))
    if phase:
        fig.add_vline(x=phase["step"], line_dash="dash", line_color="#c0392b")
        fig.add_annotation(x=phase["step"], y=1, yref="paper", showarrow=False, xanchor="left", yanchor="top",
                           text=f" phase change: step {phase['step']}", font={"color": "#c0392b"})
    fig.update_layout(title={"text": title + (f" (smoothed over {smooth} steps)" if smooth > 1 else "")},
                      xaxis_title="step", yaxis_title="cross-entropy (nats)", height=420, width=820,
                      legend={"orientation": "h", "y": -0.2})
    return fig


def score_trajectories(atlas: pd.DataFrame, column: str, heads: Sequence[tuple[int, int]] | None = None,
                       phase: dict | None = None, log_x: bool = True, title: str | None = None) -> go.Figure:
    """One line per head of score ``column`` at each checkpoint (``atlas``: step, layer, head, column rows);
    ``heads`` (default: all) picks the heads; step 0 is left off a log-scale axis."""
    _need(atlas, ["step", "layer", "head", column], "score_trajectories")
    chosen = sorted({(int(l), int(h)) for l, h in zip(atlas["layer"], atlas["head"])}) if heads is None \
        else [(int(l), int(h)) for l, h in heads]
    final = atlas[atlas["step"] == atlas["step"].max()].set_index(["layer", "head"])[column]
    fig = go.Figure()
    for layer, head in chosen:
        rows = atlas[(atlas["layer"] == layer) & (atlas["head"] == head)].sort_values("step")
        if rows.empty:
            raise InputError(f"no rows for head L{layer}H{head} in the atlas table")
        if log_x:
            rows = rows[rows["step"] > 0]
        fig.add_trace(go.Scatter(x=rows["step"], y=rows[column], mode="lines+markers", name=f"L{layer}H{head}",
                                 hovertemplate=f"L{layer}H{head}<br>step %{{x}}<br>{column}: %{{y:.3f}}<extra></extra>",
                                 legendrank=int(1000 - 999 * np.nan_to_num(final.get((layer, head), 0.0)))))
    if phase:
        fig.add_vline(x=phase["step"], line_dash="dash", line_color="#c0392b")
    fig.update_layout(title={"text": title or f"{column} per head over training"}, height=420, width=820,
                      xaxis_title="step" + (" (log scale)" if log_x else ""), yaxis_title=column)
    if log_x:
        fig.update_xaxes(type="log")
    return fig


def lag_crp_over_training(lag: pd.DataFrame, layer: int, head: int, value: str = "score",
                          steps: Sequence[int] | None = None, kind: str = "heatmap") -> go.Figure:
    """Head (layer, head)'s lag curve (``value``: "score" pre-softmax or "attention") at each checkpoint: a
    lag x checkpoint heatmap, or one line per checkpoint coloured from early (dark) to late (light)."""
    _need(lag, ["step", "layer", "head", "lag", value], "lag_crp_over_training")
    if kind not in ("heatmap", "lines"):
        raise InputError(f"kind must be 'heatmap' or 'lines', got {kind!r}")
    rows = lag[(lag["layer"] == layer) & (lag["head"] == head)]
    if rows.empty:
        raise InputError(f"no lag-curve rows for head L{layer}H{head}")
    if steps is not None:
        rows = rows[rows["step"].isin(list(steps))]
    wide = rows.pivot_table(index="step", columns="lag", values=value, dropna=False).sort_index()
    label = "pre-softmax score" if value == "score" else value
    title = f"L{layer}H{head}: {label} by lag over training"
    if kind == "heatmap":
        ticks = [str(s) for s in wide.index]
        text = [[f"step {s}, lag {g}: {format_value(v)}" for g, v in zip(wide.columns, row)]
                for s, row in zip(wide.index, wide.to_numpy())]
        fig = go.Figure(go.Heatmap(z=wide.to_numpy(), x=list(wide.columns), y=ticks, text=text,
                                   hovertemplate="%{text}<extra></extra>", colorscale="Viridis",
                                   colorbar={"title": {"text": label}}))
        fig.update_yaxes(title_text="checkpoint step", type="category")
    else:
        colors = sample_colorscale("Viridis", np.linspace(0, 1, max(len(wide), 2)).tolist())
        fig = go.Figure([go.Scatter(x=list(wide.columns), y=row, mode="lines+markers", name=f"step {s}",
                                    line={"color": c}, marker={"size": 4})
                         for c, (s, row) in zip(colors, zip(wide.index, wide.to_numpy()))])
        fig.update_yaxes(title_text=label)
    fig.update_xaxes(title_text="lag (key position - first occurrence of the query's token)", dtick=1)
    fig.update_layout(title={"text": title}, height=460, width=760)
    return fig

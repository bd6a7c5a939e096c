"""Figures of episodic-memory analyses: lag-CRPs with CIs and CMR fits, layer profiles, serial-position curves,
output serial recall, ablations and repeat surprisal (Armeni et al. 2022 style). Views only: no scores computed here."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative

from ..errors import InputError

COLORS = qualitative.Plotly
HUMAN_BETA_ENC = (0.2, 0.8)  # human CMR fits (Ji-An et al. 2024, METHODS.md s3)
HUMAN_BETA_REC = (0.2, 0.95)


def _rgba(color: str, alpha: float) -> str:
    color = color.lstrip("#")
    r, g, b = (int(color[i:i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


def _band(fig: go.Figure, x, low, high, color: str, name: str) -> None:
    """A shaded interval between ``low`` and ``high``, legend-grouped with ``name``."""
    fig.add_trace(go.Scatter(x=np.concatenate([x, x[::-1]]), y=np.concatenate([high, low[::-1]]), fill="toself",
                             fillcolor=_rgba(color, 0.18), line={"width": 0}, hoverinfo="skip", showlegend=False,
                             legendgroup=name))


def _curve_at(array, layer: int, head: int):
    return None if array is None else np.asarray(array)[layer, head]


def lag_crp_figure(curve, heads: Sequence[tuple[int, int]], *, fit=None, title: str = "Lag-CRP of attention",
                   yaxis: str = "pre-softmax score") -> go.Figure:
    """Per-head lag curves (mean, bootstrap CI band) of a LagCurve [L, H, lag], with the CMR fit overlaid (dashed) if given."""
    if not heads:
        raise InputError("give at least one (layer, head) to plot")
    fig = go.Figure()
    x = np.asarray(curve.lags)
    for i, (layer, head) in enumerate(heads):
        color, name = COLORS[i % len(COLORS)], f"L{layer}H{head}"
        mean = _curve_at(curve.mean, layer, head)
        low, high = _curve_at(curve.ci_low, layer, head), _curve_at(curve.ci_high, layer, head)
        if low is not None:
            _band(fig, x, low, high, color, name)
        fig.add_trace(go.Scatter(x=x, y=mean, mode="lines+markers", name=name, legendgroup=name,
                                 line={"color": color}, hovertemplate=f"{name}<br>lag %{{x}}: %{{y:.3g}}<extra></extra>"))
        if fit is not None:
            d = np.asarray(fit.distance)[layer, head]
            label = (f"CMR fit {name}: d={d:.3f}, β_enc={np.asarray(fit.beta_enc)[layer, head]:.2f}, "
                     f"β_rec={np.asarray(fit.beta_rec)[layer, head]:.2f}, γ_FT={np.asarray(fit.gamma_ft)[layer, head]:.1f}")
            fig.add_trace(go.Scatter(x=fit.lags, y=np.asarray(fit.curve)[layer, head], mode="lines", name=label,
                                     legendgroup=name, line={"color": color, "dash": "dash"}))
    fig.add_vline(x=0, line={"color": "#999", "width": 1, "dash": "dot"})
    fig.update_layout(title={"text": title}, xaxis_title="lag (study items from the first occurrence)",
                      yaxis_title=yaxis, height=460, legend={"font": {"size": 10}})
    return fig


def layer_profile_figure(distance, *, thresholds=(0.5, 0.1), title: str = "CMR-like heads per layer") -> go.Figure:
    """Count of heads with CMR distance below each threshold, per layer (bars), from an (L, H) distance matrix."""
    d = np.asarray(distance, dtype=np.float64)
    if d.ndim != 2:
        raise InputError(f"give an (n_layers, n_heads) distance matrix, got shape {d.shape}")
    layers = np.arange(d.shape[0])
    fig = go.Figure()
    for i, t in enumerate(thresholds):
        fig.add_trace(go.Bar(x=layers, y=(d < t).sum(1), name=f"distance < {t}", marker_color=COLORS[i]))
    fig.update_layout(title={"text": title}, barmode="group", xaxis_title="layer",
                      yaxis_title=f"heads (of {d.shape[1]})", height=380)
    return fig


def beta_figure(fit, mask, *, title: str = "CMR parameters of CMR-like heads") -> go.Figure:
    """β_enc vs β_rec of the heads in ``mask`` (L, H), coloured by layer, over the human range (shaded)."""
    mask = np.asarray(mask, dtype=bool)
    layer, head = np.nonzero(mask)
    enc, rec = np.asarray(fit.beta_enc)[mask], np.asarray(fit.beta_rec)[mask]
    jitter = np.random.default_rng(0).uniform(-0.01, 0.01, (2, len(enc)))  # grid values coincide
    fig = go.Figure()
    fig.add_shape(type="rect", x0=HUMAN_BETA_ENC[0], x1=HUMAN_BETA_ENC[1], y0=HUMAN_BETA_REC[0], y1=HUMAN_BETA_REC[1],
                  fillcolor="rgba(80,160,80,0.12)", line={"color": "rgba(80,160,80,0.6)", "dash": "dot"})
    fig.add_trace(go.Scatter(x=enc + jitter[0], y=rec + jitter[1], mode="markers",
                             marker={"color": layer, "colorscale": "Viridis", "colorbar": {"title": {"text": "layer"}},
                                     "size": 9},
                             text=[f"L{l}H{h}" for l, h in zip(layer, head)],
                             hovertemplate="%{text}<br>β_enc %{x:.2f}, β_rec %{y:.2f}<extra></extra>", name="heads"))
    fig.update_layout(title={"text": title + " (shaded: human range)"}, xaxis_title="β_enc", yaxis_title="β_rec",
                      xaxis_range=[0, 1.05], yaxis_range=[-0.05, 1.05], height=440, showlegend=False)
    return fig


def serial_position_figure(mean, sem, heads: Sequence[tuple[int, int]], *,
                           title: str = "Serial-position curve of attention") -> go.Figure:
    """Mean attention to each study item (± SEM) for the given heads, from [L, H, n_items] arrays."""
    fig = go.Figure()
    for i, (layer, head) in enumerate(heads):
        m, e = np.asarray(mean)[layer, head], np.asarray(sem)[layer, head]
        x = np.arange(1, len(m) + 1)
        color, name = COLORS[i % len(COLORS)], f"L{layer}H{head}"
        _band(fig, x, m - e, m + e, color, name)
        fig.add_trace(go.Scatter(x=x, y=m, mode="lines+markers", name=name, legendgroup=name, line={"color": color}))
    fig.update_layout(title={"text": title}, xaxis_title="serial position in the study list",
                      yaxis_title="attention", height=420)
    return fig


def recall_figure(lags, curves: dict, cis: dict | None = None, *,
                  title: str = "In-context serial recall in the model's outputs") -> go.Figure:
    """Next-token probability of the study item at each lag from the current test item, one line per condition (CI bands)."""
    fig = go.Figure()
    x = np.asarray(lags)
    for i, (name, mean) in enumerate(curves.items()):
        color = COLORS[i % len(COLORS)]
        if cis and name in cis and cis[name][0] is not None:
            _band(fig, x, np.asarray(cis[name][0]), np.asarray(cis[name][1]), color, name)
        fig.add_trace(go.Scatter(x=x, y=mean, mode="lines+markers", name=name, legendgroup=name,
                                 line={"color": color}))
    fig.update_layout(title={"text": title}, xaxis_title="lag (study items from the current item's first occurrence)",
                      yaxis_title="next-token probability", height=420)
    return fig


def crp_figure(lags, curves: dict, *, title: str = "Lag-CRP of attention (mean over heads)") -> go.Figure:
    """Kahana lag-CRP curves, one line per named condition or head group."""
    fig = go.Figure()
    for i, (name, y) in enumerate(curves.items()):
        fig.add_trace(go.Scatter(x=np.asarray(lags), y=y, mode="lines+markers", name=name,
                                 line={"color": COLORS[i % len(COLORS)]}))
    fig.update_layout(title={"text": title}, xaxis_title="lag", yaxis_title="CRP (attention per opportunity)",
                      height=400)
    return fig


def _require(table: pd.DataFrame, columns: set, what: str) -> None:
    """Refuse a table that lacks the columns a figure draws."""
    missing = sorted(set(columns) - set(table.columns))
    if missing:
        raise InputError(f"{what} lacks {missing}")


def ablation_figure(table: pd.DataFrame, *, title: str = "Ablation: serial recall and attention contiguity") -> go.Figure:
    """Bars per condition: output P(lag +1) with its CI, and attention contiguity of the intact-contiguous measured heads (second axis)."""
    _require(table, {"condition", "recall_plus1", "recall_plus1_low", "recall_plus1_high", "attn_contiguity_top"}, "the ablation table")
    fig = go.Figure()
    err = {"type": "data", "symmetric": False, "array": table["recall_plus1_high"] - table["recall_plus1"],
           "arrayminus": table["recall_plus1"] - table["recall_plus1_low"]}
    fig.add_trace(go.Bar(x=table["condition"], y=table["recall_plus1"], error_y=err, name="output P(lag +1)",
                         marker_color=COLORS[0], offsetgroup=0))
    fig.add_trace(go.Bar(x=table["condition"], y=table["attn_contiguity_top"],
                         name="attention contiguity of the contiguous measured heads (right axis)",
                         marker_color=COLORS[1], yaxis="y2", offsetgroup=1))
    fig.update_layout(title={"text": title}, barmode="group", height=420, yaxis_title="next-token probability",
                      yaxis2={"title": "contiguity", "overlaying": "y", "side": "right"},
                      legend={"orientation": "h", "y": -0.2})
    return fig


def repeat_surprisal_figure(summary: pd.DataFrame, *, by: str = "list_len",
                            title: str = "Repeat surprisal (median, 95% CI)") -> go.Figure:
    """Median repeat surprisal with CIs per condition against ``by`` (list length or intervening tokens), as in Armeni et al. 2022."""
    _require(summary, {"condition", by, "median", "ci_low", "ci_high"}, "the summary")
    fig = go.Figure()
    for i, (cond, group) in enumerate(summary.groupby("condition", sort=False)):
        g = group.sort_values(by)
        fig.add_trace(go.Scatter(x=g[by], y=g["median"], mode="lines+markers", name=cond,
                                 line={"color": COLORS[i % len(COLORS)]},
                                 error_y={"type": "data", "symmetric": False, "array": g["ci_high"] - g["median"],
                                          "arrayminus": g["median"] - g["ci_low"]}))
    fig.add_hline(y=100, line={"color": "#999", "dash": "dot"})
    label = {"list_len": "list length (nouns)", "intervening_tokens": "intervening text (tokens)"}.get(by, by)
    fig.update_layout(title={"text": title}, xaxis_title=label, yaxis_title="repeat surprisal (% of list 1)",
                      height=420)
    return fig


def surprisal_timecourse_figure(course: pd.DataFrame, *, title: str = "Surprisal per noun, list 1 then list 2") -> go.Figure:
    """Mean surprisal (bits, ± SEM) at each noun of list 1 then list 2, one line per condition (Armeni et al. 2022 Fig. 2 style)."""
    _require(course, {"condition", "list", "position", "surprisal", "sem"}, "the timecourse")
    fig = go.Figure()
    n = int(course["position"].max())
    for i, (cond, group) in enumerate(course.groupby("condition", sort=False)):
        color = COLORS[i % len(COLORS)]
        for which in (1, 2):
            g = group[group["list"] == which].sort_values("position")
            x = g["position"].to_numpy() + (0 if which == 1 else n + 1)
            fig.add_trace(go.Scatter(x=x, y=g["surprisal"], mode="lines+markers", name=cond, legendgroup=cond,
                                     showlegend=which == 1, line={"color": color},
                                     error_y={"type": "data", "array": g["sem"], "thickness": 1}))
    ticks = list(range(1, n + 1)) + list(range(n + 2, 2 * n + 2))
    fig.update_layout(title={"text": title}, yaxis_title="surprisal (bits)", height=420,
                      xaxis={"tickvals": ticks, "ticktext": [str(k) for k in range(1, n + 1)] * 2,
                             "title": {"text": "noun position: list 1 | list 2"}})
    return fig

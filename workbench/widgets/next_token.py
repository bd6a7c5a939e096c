"""Next-token distributions before and after an intervention: the comparison table and its figure."""

from __future__ import annotations

import html

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from ..errors import InputError

COLUMNS = ("token", "id", "p_before", "p_after", "logit_before", "logit_after", "logit_diff")


def compare_next_token(before: torch.Tensor, after: torch.Tensor, tokenizer, k: int = 10) -> pd.DataFrame:
    """The union of the top-``k`` tokens before and after, with probabilities, logits and logit_diff = after - before."""
    before, after = before.detach().double().cpu(), after.detach().double().cpu()
    if before.ndim != 1 or before.shape != after.shape:
        raise InputError(f"compare next-token logits of one position: two (vocab,) vectors, got {tuple(before.shape)} "
                         f"and {tuple(after.shape)}")
    p_before, p_after = before.softmax(-1), after.softmax(-1)
    ids = list(dict.fromkeys(p_before.topk(k).indices.tolist() + p_after.topk(k).indices.tolist()))
    idx = torch.tensor(ids)
    table = pd.DataFrame({
        "token": [tokenizer.decode([i]) for i in ids], "id": ids,
        "p_before": p_before[idx].numpy(), "p_after": p_after[idx].numpy(),
        "logit_before": before[idx].numpy(), "logit_after": after[idx].numpy(),
    })
    table["logit_diff"] = table["logit_after"] - table["logit_before"]
    return table.sort_values(["p_before", "p_after"], ascending=False, kind="stable").reset_index(drop=True)


def kl_divergence(before: torch.Tensor, after: torch.Tensor) -> float:
    """KL(P_before || P_after) in nats over the whole vocabulary (float64)."""
    lp, lq = before.detach().double().cpu().log_softmax(-1), after.detach().double().cpu().log_softmax(-1)
    return float((lp.exp() * (lp - lq)).sum())


def next_token_figure(table: pd.DataFrame, title: str) -> go.Figure:
    """Two panels over the compared tokens: probability before vs after (bars), and the logit change after - before."""
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise InputError(f"the table lacks {', '.join(missing)}: build it with compare_next_token")
    labels = [f"{html.escape(repr(t), quote=False)} ({i})" for t, i in zip(table["token"], table["id"])]
    fig = make_subplots(rows=1, cols=2, column_widths=[0.6, 0.4], horizontal_spacing=0.16,
                        subplot_titles=("next-token probability", "logit change (after - before)"))
    hover = "%{y}<br>p = %{x:.4f}<extra>%{fullData.name}</extra>"
    fig.add_trace(go.Bar(y=labels, x=table["p_before"], name="before", orientation="h", marker_color="#8a96a8",
                         hovertemplate=hover), 1, 1)
    fig.add_trace(go.Bar(y=labels, x=table["p_after"], name="after", orientation="h", marker_color="#d1495b",
                         hovertemplate=hover), 1, 1)
    diff = table["logit_diff"].to_numpy()
    fig.add_trace(go.Bar(y=labels, x=diff, name="logit change", orientation="h", showlegend=False,
                         marker_color=np.where(diff >= 0, "#2a9d8f", "#d1495b").tolist(),
                         hovertemplate="%{y}<br>%{x:+.3f}<extra></extra>"), 1, 2)
    fig.update_yaxes(autorange="reversed", categoryorder="array", categoryarray=labels)
    fig.update_yaxes(showticklabels=False, row=1, col=2)
    fig.update_layout(title={"text": title}, barmode="group", height=max(320, 120 + 22 * len(table)), width=900,
                      margin={"l": 140, "r": 20, "t": 80, "b": 40}, legend={"orientation": "h", "y": 1.08, "x": 0})
    return fig

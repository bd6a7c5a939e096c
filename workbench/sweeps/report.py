"""Views of a sweep folder: the effect of each single-head cell as a (layer, head) map, a top-k table, an HTML report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputError
from ..viz import head_heatmap, top_table, write_report
from .runner import load_sweep


def _metric(df: pd.DataFrame, metric: str | None) -> str:
    metrics = list(dict.fromkeys(df["metric"]))
    if metric is None:
        if not metrics:
            raise InputError("the sweep has no finished cells yet")
        return metrics[0]
    if metric not in metrics:
        raise InputError(f"the sweep has no metric {metric!r}: it has {', '.join(metrics) or 'none yet'}")
    return metric


def effect_matrix(df: pd.DataFrame, n_layers: int, n_heads: int, metric: str | None = None,
                  column: str = "effect") -> np.ndarray:
    """(L, H) ``column`` (default: effect = ablated - baseline) of the single-head cells; NaN for heads not swept."""
    metric = _metric(df, metric)
    out = np.full((n_layers, n_heads), np.nan)
    one = df[(df["metric"] == metric) & (df["head"] >= 0)]
    out[one["layer"].to_numpy(), one["head"].to_numpy()] = one[column].to_numpy()
    return out


def top_cells(df: pd.DataFrame, k: int = 10, metric: str | None = None) -> pd.DataFrame:
    """The ``k`` cells with the largest |effect| on ``metric`` (heads, value, baseline, effect, sem)."""
    metric = _metric(df, metric)
    rows = df[df["metric"] == metric]
    order = rows["effect"].abs().sort_values(ascending=False, kind="stable").index[:k]
    return rows.loc[order, ["heads", "value", "baseline", "effect", "sem", "n_prompts"]].reset_index(drop=True)


def sweep_report(out, path=None, k: int = 15) -> Path:
    """Write ``out/sweep.html``: per metric, the effect heatmap of single-head cells and the top-k cells."""
    out = Path(out)
    df = load_sweep(out)
    meta = df.attrs.get("sweep", {})
    settings = meta.get("settings", {})
    facts = meta.get("model_facts", {})
    n_layers = int(facts.get("n_layers", df["layer"].max() + 1))
    n_heads = int(facts.get("n_heads", df["head"].max() + 1))
    sections = []
    for metric in dict.fromkeys(df["metric"]):
        figures = []
        if (df["head"] >= 0).any():
            m = effect_matrix(df, n_layers, n_heads, metric)
            figures.append(head_heatmap(m, f"{metric}: ablated - baseline", colorscale="RdBu_r", zmid=0.0,
                                        colorbar_title="effect"))
        figures.append(top_table(top_cells(df, k, metric), f"top {k} cells by |effect| on {metric}"))
        base = meta.get("baseline", {}).get(metric)
        sections.append((f"{metric} (baseline {base:.4g})" if base is not None else metric, figures))
    task = settings.get("task", {})
    info = {"model": settings.get("model"), "task": task.get("name"), "items kept": f"{task.get('n_kept')} of {task.get('n_total')}",
            "filter": task.get("criterion"), "intervention": settings.get("intervention", {}).get("definition"),
            "cells": f"{len(df['heads'].unique())} of {settings.get('n_cells')}", "status": meta.get("status"),
            "seed": settings.get("seed")}
    title = f"{settings.get('intervention', {}).get('name', '?')} sweep of {settings.get('model')} on {task.get('name')}"
    return write_report(Path(path or out / "sweep.html"), title, sections, info)

"""Views of a sweep folder: the effect of each single-head cell as a (layer, head) map, a top-k table, a screen's
estimates against the exact effects of its verified cells, and an HTML report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from ..errors import InputError
from ..viz import estimate_scatter, head_heatmap, top_table, write_report
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


def _method(df: pd.DataFrame, method: str | None) -> str:
    """The rows to show: ``method`` if given, else the exact rows, or a screen's estimates when nothing was run exactly."""
    methods = list(dict.fromkeys(df["method"])) if "method" in df else ["exact"]
    if method is None:
        return "exact" if "exact" in methods or not methods else methods[0]
    if method not in methods:
        raise InputError(f"the sweep has no {method!r} rows: it has {', '.join(methods) or 'none yet'}")
    return method


def _rows(df: pd.DataFrame, metric: str | None, method: str | None) -> pd.DataFrame:
    metric, method = _metric(df, metric), _method(df, method)
    return df[(df["metric"] == metric) & ((df["method"] == method) if "method" in df else True)]


def effect_matrix(df: pd.DataFrame, n_layers: int, n_heads: int, metric: str | None = None,
                  column: str = "effect", method: str | None = None) -> np.ndarray:
    """(L, H) ``column`` (default: effect = ablated - baseline) of the single-head cells of ``method`` (default: exact, or the estimates of a screen-only sweep); NaN for heads not swept."""
    out = np.full((n_layers, n_heads), np.nan)
    one = _rows(df, metric, method)
    one = one[one["head"] >= 0]
    out[one["layer"].to_numpy(), one["head"].to_numpy()] = one[column].to_numpy()
    return out


def top_cells(df: pd.DataFrame, k: int = 10, metric: str | None = None, method: str | None = None) -> pd.DataFrame:
    """The ``k`` cells of ``method`` (default as in ``effect_matrix``) with the largest |effect| on ``metric`` (heads, value, baseline, effect, sem, n_prompts; estimate where verified)."""
    rows = _rows(df, metric, method)
    order = rows["effect"].abs().sort_values(ascending=False, kind="stable").index[:k]
    columns = ["heads", "value", "baseline", "effect", "sem", "n_prompts"]
    if "estimate" in rows and rows["verify"].astype(str).ne("").any():
        columns += ["estimate", "verify"]
    return rows.loc[order, columns].reset_index(drop=True)


def screen_table(df: pd.DataFrame, metric: str | None = None) -> pd.DataFrame:
    """One row per screened cell: heads, layer, head, estimate (the screen's), exact (the exact effect, NaN where not verified), verify ("top", "calibration" or "")."""
    metric = _metric(df, metric)
    rows = df[df["metric"] == metric]
    est = rows[rows["method"] != "exact"] if "method" in rows else rows.iloc[0:0]
    if not len(est):
        raise InputError("the sweep holds no estimates: run it with --screen attribution (screen='attribution')")
    exact = rows[rows["method"] == "exact"].set_index("heads")
    table = est[["heads", "layer", "head", "effect"]].rename(columns={"effect": "estimate"}).reset_index(drop=True)
    table["exact"] = table["heads"].map(exact["effect"]).astype(float)
    table["verify"] = table["heads"].map(exact["verify"]).fillna("").astype(str)
    return table


def screen_summary(table: pd.DataFrame) -> dict:
    """How well the estimates matched the exact effects of the verified cells (a ``screen_table``): counts, Spearman
    over all verified cells and over the random calibration cells, median |exact - estimate|, and the largest |exact|
    among the calibration cells next to the smallest among the top cells (a large one is a missed head)."""
    done = table[table["exact"].notna()]
    calib, top = done[done["verify"] == "calibration"], done[done["verify"] == "top"]

    def rho(part):
        return float(spearmanr(part["estimate"], part["exact"]).statistic) if len(part) > 2 else float("nan")
    return {"cells": len(table), "verified": len(done), "spearman_verified": rho(done),
            "spearman_calibration": rho(calib),
            "median_abs_error": float((done["exact"] - done["estimate"]).abs().median()) if len(done) else float("nan"),
            "largest_calibration_exact": float(calib["exact"].abs().max()) if len(calib) else float("nan"),
            "smallest_top_exact": float(top["exact"].abs().min()) if len(top) else float("nan")}


def _screen_section(df: pd.DataFrame, metric: str, n_layers: int, n_heads: int, k: int) -> list:
    table = screen_table(df, metric)
    method = _method(df[df["method"] != "exact"], None)
    items = [head_heatmap(effect_matrix(df, n_layers, n_heads, metric, method=method),
                          f"{metric}: {method} estimate of ablated - baseline", colorscale="RdBu_r", zmid=0.0,
                          colorbar_title="estimate")]
    if table["exact"].notna().any():
        s = screen_summary(table)
        items.append(f"{s['verified']} of {s['cells']} cells verified exactly. Spearman(estimate, exact) "
                     f"{s['spearman_verified']:.3f} over the verified cells, {s['spearman_calibration']:.3f} over the "
                     f"random calibration cells; median |exact - estimate| {s['median_abs_error']:.3g}; largest |exact| "
                     f"among the calibration cells {s['largest_calibration_exact']:.3g} (smallest among the top cells "
                     f"{s['smallest_top_exact']:.3g}).")
        items.append(estimate_scatter(table, f"{metric}: {method} estimate vs exact effect (verified cells)"))
        done = table[table["exact"].notna()]
        items.append(top_table(done.reindex(done["exact"].abs().sort_values(ascending=False, kind="stable").index)
                               .head(k)[["heads", "estimate", "exact", "verify"]], f"verified cells by |exact| on {metric}"))
    else:
        items.append(top_table(table.reindex(table["estimate"].abs().sort_values(ascending=False, kind="stable").index)
                               .head(k)[["heads", "estimate"]], f"top {k} cells by |estimate| on {metric}"))
    return items


def sweep_report(out, path=None, k: int = 15) -> Path:
    """Write ``out/sweep.html``: per metric, the effect heatmap of single-head cells and the top-k cells; for a screened sweep also the estimates vs the exact effects."""
    out = Path(out)
    df = load_sweep(out)
    meta = df.attrs.get("sweep", {})
    settings = meta.get("settings", {})
    facts = meta.get("model_facts", {})
    n_layers = int(facts.get("n_layers", df["layer"].max() + 1))
    n_heads = int(facts.get("n_heads", df["head"].max() + 1))
    exact = df[df["method"] == "exact"]
    screened = bool(len(df) and (df["method"] != "exact").any())
    sections = []
    for metric in dict.fromkeys(df["metric"]):
        figures = []
        if len(exact) and (exact["head"] >= 0).any():
            m = effect_matrix(exact, n_layers, n_heads, metric)
            figures.append(head_heatmap(m, f"{metric}: ablated - baseline (exact)", colorscale="RdBu_r", zmid=0.0,
                                        colorbar_title="effect"))
        if len(exact):
            figures.append(top_table(top_cells(exact, k, metric), f"top {k} cells by |effect| on {metric} (exact)"))
        base = meta.get("baseline", {}).get(metric)
        heading = f"{metric} (baseline {base:.4g})" if base is not None else metric
        if figures:
            sections.append((heading, figures))
        if screened:
            sections.append((f"{heading}: attribution estimate vs exact", _screen_section(df, metric, n_layers, n_heads, k)))
    task = settings.get("task", {})
    screen = settings.get("screen")
    info = {"model": settings.get("model"), "task": task.get("name"), "items kept": f"{task.get('n_kept')} of {task.get('n_total')}",
            "filter": task.get("criterion"), "intervention": settings.get("intervention", {}).get("definition"),
            "cells": f"{len(df['heads'].unique())} of {settings.get('n_cells')}", "status": meta.get("status"),
            "seed": settings.get("seed")}
    if screen:
        info["screen"] = (f"{meta.get('screen', {}).get('method', screen['method'])} (fixes: "
                          f"{', '.join(screen['fixes']) or 'none'}), {screen['verify']} top + {screen['verify']} random "
                          "cells verified exactly")
    title = f"{settings.get('intervention', {}).get('name', '?')} sweep of {settings.get('model')} on {task.get('name')}"
    return write_report(Path(path or out / "sweep.html"), title, sections, info)

"""Atlases of several models side by side: how many heads of each kind a model has and where they sit in depth.

A head's *normalised depth* is layer / (n_layers - 1): 0 is the first layer, 1 the last, so a 30-layer and an
18-layer model line up. A *head type* is a thresholded Atlas column, with the threshold of the analysis that
defines it (``HEAD_TYPES``). ``compare_atlases`` summarises per model and type the count, the share of the
model's heads and the quartiles of the normalised depth of those heads; it also lists every typed head, the
per-layer mean and max of each column along normalised depth, and how much the types overlap (e.g. the share of
retrieval heads that are also induction heads). Figures: ``workbench.viz.compare``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from .atlas import Atlas
from .episodic.cmr_fit import CMR_LIKE
from .episodic.summary import INDUCTION_HEAD
from .errors import InputError
from .retrieval.long_range import LONG_RANGE_THRESHOLD
from .retrieval.scoring import RETRIEVAL_THRESHOLD

PATTERN_THRESHOLD = 0.3  # ours, for previous-token and duplicate-token heads (no paper fixes one): as induction
SINK_THRESHOLD = 0.5  # ours: Gu et al.'s Sink_1^0.3 criterion holds in more than half of the samples


@dataclass(frozen=True)
class HeadType:
    """Heads whose ``column`` lies strictly above (``above``) or below ``threshold``; NaN never qualifies."""

    name: str
    column: str
    threshold: float
    above: bool = True
    source: str = ""

    @property
    def rule(self) -> str:
        return f"{self.column} {'>' if self.above else '<'} {self.threshold:g}"

    def select(self, values) -> np.ndarray:
        """Bool mask of the values that make a head of this type (NaN: False)."""
        v = np.asarray(values, dtype=np.float64)
        with np.errstate(invalid="ignore"):
            return (v > self.threshold) if self.above else (v < self.threshold)


HEAD_TYPES = (
    HeadType("induction", "induction", INDUCTION_HEAD, True, "Olsson et al. 2022; ARENA"),
    HeadType("previous_token", "previous_token", PATTERN_THRESHOLD, True, "Olsson et al. 2022 (threshold ours)"),
    HeadType("duplicate_token", "duplicate_token", PATTERN_THRESHOLD, True, "Wang et al. 2022 (threshold ours)"),
    HeadType("retrieval", "retrieval", RETRIEVAL_THRESHOLD, True, "Wu et al. 2024"),
    HeadType("cmr_like", "cmr_distance", CMR_LIKE, False, "Ji-An et al. 2024"),
    HeadType("sink", "sink_rate", SINK_THRESHOLD, True, "Gu et al. 2024 Sink_1^0.3 (threshold on the rate ours)"),
    HeadType("long_range", "long_range", LONG_RANGE_THRESHOLD, True, "METHODS.md s8 (threshold ours)"),
)

SUMMARY_COLUMNS = ["model", "head_type", "rule", "measured", "n_heads", "count", "share", "depth_median", "depth_q1",
                   "depth_q3", "depth_min", "depth_max"]


def normalised_depth(layer, n_layers: int) -> np.ndarray:
    """layer / (n_layers - 1): 0 = first layer, 1 = last (0 for a one-layer model)."""
    if n_layers < 1:
        raise InputError(f"n_layers must be >= 1, got {n_layers}")
    layer = np.asarray(layer, dtype=np.float64)
    return np.zeros_like(layer) if n_layers == 1 else layer / (n_layers - 1)


@dataclass
class AtlasComparison:
    """The result of :func:`compare_atlases`: tables in long format (one model per block of rows)."""

    models: list[str]
    head_types: tuple[HeadType, ...]
    summary: pd.DataFrame  # SUMMARY_COLUMNS, one row per (model, head type)
    heads: pd.DataFrame  # model, head_type, layer, head, layer_type, depth, value: every typed head
    profiles: pd.DataFrame  # model, column, layer, layer_type, depth, mean, max: per-layer profile of each column
    overlaps: pd.DataFrame  # model, type_a, type_b, n_a, n_both, share_of_a

    def table(self, value: str = "count") -> pd.DataFrame:
        """One summary statistic as head type x model (rows in ``head_types`` order)."""
        if value not in self.summary.columns or value in ("model", "head_type"):
            raise InputError(f"no summary statistic {value!r}: choose from {', '.join(SUMMARY_COLUMNS[2:])}")
        wide = self.summary.pivot(index="head_type", columns="model", values=value)
        return wide.reindex(index=[t.name for t in self.head_types], columns=self.models)

    def overlap(self, type_a: str, type_b: str) -> pd.DataFrame:
        """Per model: heads of ``type_a``, how many are also ``type_b``, and that share."""
        o = self.overlaps
        rows = o[(o["type_a"] == type_a) & (o["type_b"] == type_b)]
        if rows.empty:
            known = sorted(set(o["type_a"]))
            raise InputError(f"no overlap of {type_a!r} with {type_b!r}: both must be measured types, from "
                             f"{', '.join(known) or '(none)'}")
        return rows.set_index("model")[["n_a", "n_both", "share_of_a"]]

    def markdown(self) -> str:
        """A pipe table: per head type and model, 'count/n (share %), depth median [q1, q3]' or 'not measured'."""
        lines = ["| head type | rule | " + " | ".join(self.models) + " |", "|---|---|" + "---|" * len(self.models)]
        s = self.summary.set_index(["head_type", "model"])
        for t in self.head_types:
            cells = []
            for m in self.models:
                r = s.loc[(t.name, m)]
                if not r["measured"]:
                    cells.append("not measured")
                elif r["count"] == 0:
                    cells.append(f"0/{int(r['n_heads'])}")
                else:
                    cells.append(f"{int(r['count'])}/{int(r['n_heads'])} ({100 * r['share']:.1f}%), depth {r['depth_median']:.2f} "
                                 f"[{r['depth_q1']:.2f}, {r['depth_q3']:.2f}]")
            lines.append(f"| {t.name} | {t.rule} | " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    def figure(self, title: str | None = None):
        """Share of heads per type and the normalised depth of every typed head, models side by side (plotly)."""
        from .viz.compare import depth_comparison_figure

        return depth_comparison_figure(self.summary, self.heads, self.models, [t.name for t in self.head_types],
                                       title=title)

    def profile_figure(self, columns: Sequence[str], stat: str = "mean", title: str | None = None):
        """Per-layer ``stat`` ('mean' or 'max') of each column over normalised depth, one line per model (plotly)."""
        from .viz.compare import depth_profile_figure

        return depth_profile_figure(self.profiles, list(columns), self.models, stat=stat, title=title)


def _named(atlases) -> dict[str, Atlas]:
    if isinstance(atlases, Mapping):
        named = {str(k): v for k, v in atlases.items()}
    else:
        atlases = list(atlases)
        names = [str(a.meta.get("model", f"atlas {i}")) if isinstance(a, Atlas) else "" for i, a in enumerate(atlases)]
        if len(set(names)) < len(names):
            raise InputError(f"two atlases share the model name {names}: pass a dict {{name: atlas}} instead")
        named = dict(zip(names, atlases))
    if len(named) < 1:
        raise InputError("give at least one Atlas to compare (usually two: {'model a': atlas_a, 'model b': atlas_b})")
    for name, a in named.items():
        if not isinstance(a, Atlas):
            raise InputError(f"{name!r} is a {type(a).__name__}, not an Atlas: load one with Atlas.load(folder)")
    return named


def compare_atlases(atlases, head_types: Sequence[HeadType] = HEAD_TYPES) -> AtlasComparison:
    """Count, share and normalised-depth quartiles of each head type per model; typed heads, layer profiles, overlaps."""
    named = _named(atlases)
    head_types = tuple(head_types)
    if not head_types or not all(isinstance(t, HeadType) for t in head_types):
        raise InputError("head_types must be a non-empty sequence of HeadType (see workbench.comparison.HEAD_TYPES)")
    if len({t.name for t in head_types}) < len(head_types):
        raise InputError("head type names must be unique")
    summary, heads, profiles, overlaps = [], [], [], []
    for model, atlas in named.items():
        t = atlas.table
        depth = normalised_depth(t["layer"].to_numpy(), atlas.n_layers)
        n = len(t)
        masks = {}
        for ht in head_types:
            measured = ht.column in atlas.score_columns and bool(t[ht.column].notna().any())
            row = {"model": model, "head_type": ht.name, "rule": ht.rule, "measured": measured, "n_heads": n}
            if not measured:
                summary.append({**row, "count": np.nan, "share": np.nan})
                continue
            mask = ht.select(t[ht.column].to_numpy())
            masks[ht.name] = mask
            d = depth[mask]
            q = np.quantile(d, [0.0, 0.25, 0.5, 0.75, 1.0]) if d.size else np.full(5, np.nan)
            summary.append({**row, "count": int(mask.sum()), "share": float(mask.mean()), "depth_median": q[2],
                            "depth_q1": q[1], "depth_q3": q[3], "depth_min": q[0], "depth_max": q[4]})
            heads.append(pd.DataFrame({"model": model, "head_type": ht.name, "layer": t["layer"][mask],
                                       "head": t["head"][mask], "layer_type": t["layer_type"][mask],
                                       "depth": d, "value": t[ht.column][mask]}))
        for a, ma in masks.items():
            for b, mb in masks.items():
                if a != b:
                    both = int((ma & mb).sum())
                    overlaps.append({"model": model, "type_a": a, "type_b": b, "n_a": int(ma.sum()), "n_both": both,
                                     "share_of_a": both / int(ma.sum()) if ma.any() else np.nan})
        by_layer = t.groupby("layer", sort=True)
        layer_type = by_layer["layer_type"].first()
        for column in atlas.score_columns:
            agg = by_layer[column].agg(["mean", "max"])
            profiles.append(pd.DataFrame({"model": model, "column": column, "layer": agg.index,
                                          "layer_type": layer_type.loc[agg.index].to_numpy(),
                                          "depth": normalised_depth(agg.index.to_numpy(), atlas.n_layers),
                                          "mean": agg["mean"].to_numpy(), "max": agg["max"].to_numpy()}))
    summary = pd.DataFrame(summary).reindex(columns=SUMMARY_COLUMNS)
    heads_cols = ["model", "head_type", "layer", "head", "layer_type", "depth", "value"]
    heads = pd.concat(heads, ignore_index=True) if heads else pd.DataFrame(columns=heads_cols)
    prof_cols = ["model", "column", "layer", "layer_type", "depth", "mean", "max"]
    profiles = pd.concat(profiles, ignore_index=True) if profiles else pd.DataFrame(columns=prof_cols)
    overlaps = pd.DataFrame(overlaps, columns=["model", "type_a", "type_b", "n_a", "n_both", "share_of_a"])
    return AtlasComparison(list(named), head_types, summary, heads.reset_index(drop=True), profiles, overlaps)

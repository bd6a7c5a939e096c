"""Live plotly figures inside widgets: wrap a workbench.viz figure once, then swap in new figures in place.

A plotly ``FigureWidget`` ships plotly.js with it (the anywidget front end bundled in the plotly
package, no CDN), about 5 MB per widget, so each dashboard creates its figure widgets once and
replaces their contents in one batched message per update.

plotly sends later changes to the browser as deltas only, so a view opened afterwards (a page reload, a
second view of the cell, or a view whose first load timed out) would show the figure as first displayed:
``replace_figure`` also stores the full current state on the widget, which such views draw from.
"""

from __future__ import annotations

import math
from copy import deepcopy

import numpy as np

import plotly.graph_objects as go

from ..errors import WorkbenchError

_KEEP = ("type", "uid")  # trace keys that identify a trace rather than style it


def figure_widget(fig: go.Figure | None = None) -> go.FigureWidget:
    """A plotly FigureWidget showing ``fig`` (empty if None); a clear error if anywidget is missing."""
    try:
        return go.FigureWidget(fig if fig is not None else go.Figure())
    except ImportError as e:  # plotly >= 6 renders FigureWidget through anywidget
        raise WorkbenchError(f"interactive figures need the anywidget package ({e}): pip install anywidget") from None


def replace_figure(widget: go.FigureWidget, fig: go.Figure) -> None:
    """Show ``fig`` in ``widget``: same trace types are updated in place (click callbacks survive), else replaced."""
    if [t.type for t in widget.data] != [t.type for t in fig.data]:
        widget.data = ()
        widget.add_traces(list(fig.data))
        widget.update_layout(_with_cleared(widget.layout.to_plotly_json(), fig.layout.to_plotly_json()),
                             overwrite=True)
    else:
        with widget.batch_update():
            for old, new in zip(widget.data, fig.data):
                old.update(_with_cleared(old.to_plotly_json(), new.to_plotly_json()), overwrite=True)
            widget.layout.update(_with_cleared(widget.layout.to_plotly_json(), fig.layout.to_plotly_json()),
                                 overwrite=True)
    store_state(widget)


def store_state(widget: go.FigureWidget) -> None:
    """Sync the widget's full current traces and layout (what a newly opened view draws; as plotly does on display)."""
    widget._widget_layout = _json_safe(deepcopy(widget._layout_obj._props))
    widget._widget_data = _json_safe(deepcopy(widget._data))


def _json_safe(value):
    """``value`` with NaN/inf floats as None (JSON has no NaN; plotly draws None as a gap, e.g. heads not swept yet)."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.ndarray) and value.dtype.kind == "f" and not np.isfinite(value).all():
        return _json_safe(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _with_cleared(old: dict, new: dict) -> dict:
    """``new`` plus None for every top-level key only ``old`` has, so stale settings (zmid, ranges) are reset."""
    return {**{k: None for k in old if k not in new and k not in _KEEP}, **{k: v for k, v in new.items() if k != "type"}}

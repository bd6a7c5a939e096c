"""A clickable layer x head grid: a workbench.viz head heatmap in a FigureWidget, with chosen heads outlined."""

from __future__ import annotations

from typing import Callable, Iterable

import plotly.graph_objects as go

from .figure_widget import figure_widget, replace_figure, store_state

OUTLINE = {"color": "#e8112d", "width": 3}


class HeadGrid:
    """Shows a layer x head heatmap (x = head, y = layer), calls ``on_click(layer, head)`` on a click, outlines ``marked`` heads."""

    def __init__(self, fig: go.Figure, on_click: Callable[[int, int], None], css_class: str = "wb-head-grid"):
        self._on_click = on_click
        self.marked: tuple[tuple[int, int], ...] = ()
        self._fig = fig
        self.figure = figure_widget(self._with_outlines(fig))
        self.figure.add_class(css_class)
        self._listen()

    def show(self, fig: go.Figure) -> None:
        """Replace the heatmap (e.g. another score's colours), keeping the outlines."""
        self._fig = fig
        types = [t.type for t in self.figure.data]
        replace_figure(self.figure, self._with_outlines(fig))
        if types != [t.type for t in self.figure.data]:
            self._listen()  # traces were replaced: callbacks went with them

    def mark(self, heads: Iterable[tuple[int, int]]) -> None:
        """Outline exactly these (layer, head) cells."""
        self.marked = tuple(sorted({(int(l), int(h)) for l, h in heads}))
        self.figure.layout.shapes = self._outlines()
        store_state(self.figure)

    def click(self, layer: int, head: int) -> None:
        """Act as if the cell (layer, head) were clicked in the browser (sends the same message plotly.js sends)."""
        self.figure._js2py_pointsCallback = {
            "event_type": "plotly_click",
            "points": {"trace_indexes": [0], "point_indexes": [[int(layer), int(head)]], "xs": [int(head)],
                       "ys": [int(layer)]},
        }

    def _listen(self) -> None:
        for trace in self.figure.data:
            trace.on_click(self._clicked)

    def _clicked(self, trace, points, state) -> None:
        if points.xs and points.ys:
            self._on_click(int(round(float(points.ys[0]))), int(round(float(points.xs[0]))))

    def _outlines(self) -> list[dict]:
        return [{"type": "rect", "xref": "x", "yref": "y", "x0": h - 0.5, "x1": h + 0.5, "y0": l - 0.5, "y1": l + 0.5,
                 "line": OUTLINE, "fillcolor": "rgba(0,0,0,0)"} for l, h in self.marked]

    def _with_outlines(self, fig: go.Figure) -> go.Figure:
        out = go.Figure(fig)
        out.update_layout(shapes=self._outlines(), clickmode="event")
        return out

"""SweepViewer: a head-ablation sweep folder (``workbench.sweeps``: sweep.json + Parquet parts) as a live per-head effect map.

The folder may still be growing: the Refresh button (or polling) re-reads it with
``workbench.sweeps.runner.load_sweep``, which returns every finished cell (parts are written
atomically and never changed, so a part that exists is complete, and a refresh reads only new parts).
"""

from __future__ import annotations

import html
import threading
import time
from pathlib import Path

import ipywidgets as widgets
import numpy as np
import pandas as pd

from ..errors import InputError
from ..viz.heads import format_value, head_heatmap
from .background import Jobs
from .figure_widget import figure_widget, replace_figure

NOT_VALUES = {"layer", "head", "n_prompts"}  # numeric columns that are not a per-head result


class SweepViewer(widgets.VBox):
    """Effects per head of a sweep folder, refreshed on demand or every ``poll`` seconds while it is being written.

    Dropdowns choose the intervention, the metric, the rows (``exact``, or a screen's estimates such as
    ``atp+qk``) and the value shown (``effect`` = ablated - baseline by default; any numeric column, e.g.
    ``estimate``: on exact rows of a verified screen, the screen's estimate); single-head cells fill the
    layer x head map (blank where not yet done), multi-head cells (layers, KV groups, pairs) are listed with
    their heads. A screened sweep with verified cells also shows estimate vs exact (a scatter and its Spearman).
    ``rows`` is the table read so far.
    """

    _stop: threading.Event | None = None  # set by close(); also read when __init__ failed early

    def __init__(self, path, value: str = "effect", poll: float | None = None, k: int = 10,
                 background: bool = True):
        self.folder = Path(path)
        if not self.folder.is_dir():
            raise InputError(f"no sweep folder at {self.folder}: give the --out folder of `workbench sweep`")
        self.k = int(k)
        self.rows = pd.DataFrame()
        self.meta: dict = {}
        self._parts: dict = {}  # parts already read (they never change): a refresh reads only new ones
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self.updated_at: float | None = None
        self._quiet = False  # set while the dropdowns' options are replaced
        self.jobs = Jobs(background)

        self.intervention = widgets.Dropdown(description="intervention", options=[])
        self.metric = widgets.Dropdown(description="metric", options=[])
        self.method = widgets.Dropdown(description="rows", options=[],
                                       tooltip="exact ablation, or a screen's estimates (atp, atp+qk, atp+graddrop, atp*)")
        self.value = widgets.Dropdown(description="show", options=[value], value=value)
        self.refresh_button = widgets.Button(description="Refresh", icon="refresh",
                                             tooltip="read the cells finished since the last look")
        self.auto = widgets.Checkbox(value=bool(poll), description="refresh every", indent=False,
                                     layout=widgets.Layout(width="auto"))
        self.interval = widgets.BoundedFloatText(value=float(poll or 5.0), min=0.5, max=3600.0,
                                                 layout=widgets.Layout(width="70px"))
        self.info = widgets.HTML()
        self.figure = figure_widget()
        self.figure.add_class("wb-sweep-heatmap")
        self.top = widgets.HTML()
        self.groups = widgets.HTML()
        self.screen = widgets.VBox()  # estimate vs exact, filled once a screened sweep has verified cells
        self.scatter: widgets.Widget | None = None

        for control in (self.intervention, self.metric, self.method, self.value):
            control.observe(lambda change: self._quiet or self._draw(), names="value")
        self.refresh_button.on_click(lambda _: self.refresh())
        self.auto.observe(lambda change: self._set_polling(), names="value")
        super().__init__([
            widgets.HTML(f"<b>Sweep</b> {html.escape(str(self.folder))}"),
            widgets.HBox([self.intervention, self.metric, self.method, self.value]),
            widgets.HBox([self.refresh_button, self.auto, self.interval, widgets.HTML("s")]),
            self.jobs.view, self.info, widgets.HBox([self.figure, self.top]), self.groups, self.screen,
        ])
        self.add_class("wb-sweep-viewer")
        self.refresh()
        self._set_polling()

    # ------------------------------------------------------------------ actions
    def refresh(self) -> None:
        """Re-read the folder and redraw (what the button and the polling do)."""
        from ..sweeps.runner import load_sweep

        self.jobs.run("reading the sweep", lambda report: load_sweep(self.folder, prompt_values=False, cache=self._parts), self._merge)

    def wait(self, timeout: float | None = 60.0) -> "SweepViewer":
        """Block until the last refresh is shown; re-raise a failure."""
        self.jobs.wait(timeout)
        return self

    def close(self) -> None:
        """Stop polling and close the widget."""
        if self._stop is not None:
            self._stop.set()
        super().close()

    def matrix(self) -> np.ndarray:
        """The shown value per (layer, head) for the chosen intervention and metric; NaN where not yet done."""
        out = np.full(self._shape(), np.nan)
        rows = self._selected()
        rows = rows[rows["head"] >= 0] if len(rows) else rows
        if len(rows) and self.value.value in rows:
            out[rows["layer"].to_numpy(int), rows["head"].to_numpy(int)] = rows[self.value.value].to_numpy(float)
        return out

    # ------------------------------------------------------------------ internals
    def _set_polling(self) -> None:
        if not self.auto.value:
            self._stop.set()
            return
        if self._poller is not None and self._poller.is_alive() and not self._stop.is_set():
            return
        self._stop = threading.Event()
        stop = self._stop

        def loop():
            while not stop.wait(max(0.5, float(self.interval.value))):
                if not self.jobs.busy:
                    self.refresh()

        self._poller = threading.Thread(target=loop, name="workbench-sweep-poll", daemon=True)
        self._poller.start()

    def _merge(self, rows: pd.DataFrame) -> None:
        self.meta = rows.attrs.get("sweep", {})
        self.rows = rows
        self.updated_at = time.time()
        if len(rows):
            numeric = [c for c in rows.columns if c not in NOT_VALUES and pd.api.types.is_numeric_dtype(rows[c])]
            self._quiet = True
            try:
                _set_options(self.intervention, sorted(rows["intervention"].astype(str).unique()))
                _set_options(self.metric, sorted(rows["metric"].astype(str).unique()))
                methods = sorted(rows["method"].astype(str).unique(), key=lambda m: (m != "exact", m))
                _set_options(self.method, methods)
                _set_options(self.value, numeric)
            finally:
                self._quiet = False
        self._draw()

    def _selected(self, method: str | None = None) -> pd.DataFrame:
        """Rows of the chosen intervention, metric and rows kind (``method``: the chosen one by default)."""
        method = method or self.method.value
        if not len(self.rows) or self.intervention.value is None or self.metric.value is None or method is None:
            return self.rows.iloc[0:0]
        return self.rows[(self.rows["intervention"].astype(str) == self.intervention.value)
                         & (self.rows["metric"].astype(str) == self.metric.value)
                         & (self.rows["method"].astype(str) == method)]

    def _shape(self) -> tuple[int, int]:
        facts = self.meta.get("model_facts", {})
        n_layers = facts.get("n_layers") or (int(self.rows["layer"].max()) + 1 if len(self.rows) else 1)
        n_heads = facts.get("n_heads") or (int(self.rows["head"].max()) + 1 if len(self.rows) else 1)
        return int(max(n_layers, 1)), int(max(n_heads, 1))

    def _draw(self) -> None:
        rows = self._selected()
        singles, groups = (rows[rows["head"] >= 0], rows[rows["head"] < 0]) if len(rows) else (rows, rows)
        name = self.value.value
        settings = self.meta.get("settings", {})
        stamp = time.strftime("%H:%M:%S", time.localtime(self.updated_at)) if self.updated_at else "never"
        n_cells, done = settings.get("n_cells"), self.rows["heads"].nunique() if len(self.rows) else 0
        progress = f"{done} of {n_cells} cells done" if n_cells else f"{done} cells done"
        self.info.value = (f"{html.escape(self.meta.get('status', 'no sweep.json yet'))}: {progress} "
                           f"({len(singles)} single heads and {len(groups)} head groups for this intervention "
                           f"and metric); last refresh {stamp}. {html.escape(_describe(self.meta))}")
        m = self.matrix()
        finite = m[np.isfinite(m)]
        diverging = finite.size > 0 and finite.min() < 0 < finite.max()
        kind = "" if self.method.value in (None, "exact") else f" ({self.method.value} estimate)"
        title = f"{name}: {self.intervention.value or '-'} ablation, {self.metric.value or '-'}{kind}"
        replace_figure(self.figure, head_heatmap(m, title, "RdBu_r" if diverging else "Viridis",
                                                 zmid=0.0 if diverging else None, colorbar_title=name))
        self.top.value = _table_html(singles, name, self.k, f"largest |{name}|")
        self.groups.value = _table_html(groups, name, self.k, "head groups") if len(groups) else ""
        self._draw_screen()

    def _draw_screen(self) -> None:
        """Estimate vs exact of the verified cells (screened sweeps), for the chosen intervention and metric."""
        from ..sweeps.report import screen_summary
        from ..viz import estimate_scatter

        exact = self._selected("exact")
        verified = exact[exact["verify"].astype(str) != ""] if len(exact) else exact
        if not len(verified):
            self.screen.children = ()
            return
        table = verified.rename(columns={"effect": "exact"})[["heads", "estimate", "exact", "verify"]]
        s = screen_summary(table)
        text = widgets.HTML(f"<b>Estimate vs exact</b>: {s['verified']} cells verified; Spearman "
                            f"{format_value(s['spearman_verified'])} (calibration cells "
                            f"{format_value(s['spearman_calibration'])}); median |exact - estimate| "
                            f"{format_value(s['median_abs_error'])}; largest |exact| among the random calibration "
                            f"cells {format_value(s['largest_calibration_exact'])}")
        fig = estimate_scatter(table, f"{self.metric.value}: estimate vs exact (verified cells)")
        if self.scatter is None:
            self.scatter = figure_widget(fig)
            self.scatter.add_class("wb-sweep-scatter")
        else:
            replace_figure(self.scatter, fig)
        self.screen.children = (text, self.scatter)


def _set_options(dropdown: widgets.Dropdown, options: list[str]) -> None:
    """Give ``dropdown`` these options, keeping its value if still offered (else the first)."""
    if list(dropdown.options) == options:
        return
    keep = dropdown.value
    dropdown.options = options
    if options:
        dropdown.value = keep if keep in options else options[0]


def _describe(meta: dict) -> str:
    """A short line of the sweep's settings from sweep.json (model, task, seed, baselines)."""
    s = meta.get("settings", {})
    parts = [f"model {s['model']}"] if "model" in s else []
    task = s.get("task", {})
    if task:
        parts.append(f"task {task.get('name')} ({task.get('n_kept')} of {task.get('n_total')} prompts kept)")
    if "seed" in s:
        parts.append(f"seed {s['seed']}")
    parts += [f"baseline {k} = {format_value(v)}" for k, v in meta.get("baseline", {}).items()]
    return ", ".join(parts)


def _table_html(rows: pd.DataFrame, name: str, k: int, title: str) -> str:
    """The ``k`` rows with the largest |name| as an HTML table."""
    if not len(rows) or name not in rows:
        return ""
    top = rows.reindex(rows[name].abs().sort_values(ascending=False, kind="stable").index).head(k)
    extra = ("estimate", "verify") if "verify" in top and top["verify"].astype(str).ne("").any() else ()
    columns = list(dict.fromkeys(c for c in ("heads", name, "value", "baseline", "sem", "n_prompts", *extra) if c in top))
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(format_value(r[c]))}</td>" for c in columns) + "</tr>"
                   for r in top.to_dict("records"))
    return f"<div style='padding:0 1em'><b>{html.escape(title)}</b><table><tr>{head}</tr>{body}</table></div>"

"""HeadExplorer: an Atlas as a clickable layer x head grid; a click shows that head's attention, scores and lag-CRP."""

from __future__ import annotations

import html
from collections import OrderedDict

import ipywidgets as widgets
import numpy as np
import plotly.graph_objects as go

from ..errors import InputError
from ..viz.heads import format_interval, format_value, pattern_figure
from .background import Jobs
from .figure_widget import figure_widget, replace_figure
from .head_grid import HeadGrid

DEFAULT_TEXT = ("The old lighthouse keeper climbed the stairs at dusk and lit the lamp. Ships passed the rocks "
                "safely that night. The old lighthouse keeper climbed the stairs at dusk and lit the lamp.")
REPEATED = "repeated random tokens (BOS + 20 tokens x 2, seed 0)"
OWN_TEXT = "your text (edit below, then Run)"
CACHED_LAYERS = 16  # captured layers kept per explorer (each is heads x N x N float32)


class HeadExplorer(widgets.VBox):
    """A dashboard over an Atlas and its Subject: grid coloured by a chosen column; click a head for its pattern,
    scores and lag-CRP; a prompt box re-runs the pattern on new text.

    ``prompts`` maps names to text or token ids (default: repeated random tokens and a short repeated text).
    ``lag_crp``: per-head lag curves (a ``workbench.episodic.LagCurve`` [L, H, lag], e.g. the episodic
    analysis's), optionally with their CMR fit ``lag_fit`` (``CMRFit``), drawn by
    ``workbench.viz.episodic.lag_crp_figure``; without it the panel is left out. Captures run on a worker
    thread: ``wait()`` blocks until the view is up to date.
    """

    def __init__(self, atlas, subject, column: str | None = None, head: tuple[int, int] | None = None,
                 prompts: dict | None = None, lag_crp=None, lag_fit=None, lag_axis: str = "pre-softmax score",
                 background: bool = True):
        if (atlas.n_layers, atlas.n_heads) != (subject.n_layers, subject.n_heads):
            raise InputError(f"the Atlas has {atlas.n_layers} layers x {atlas.n_heads} heads but {subject.name} has "
                             f"{subject.n_layers} x {subject.n_heads}: pass the Subject the Atlas was computed on")
        columns = atlas.score_columns
        if not columns:
            raise InputError("the Atlas has no score columns yet: run wb.scan(subject) or add one with with_scores")
        column = column or ("induction" if "induction" in columns else columns[0])
        if column not in columns:
            raise InputError(f"no score column {column!r} in this Atlas: choose from {', '.join(columns)}")
        self.atlas, self.subject = atlas, subject
        self._prompts = dict(prompts) if prompts else self._default_prompts(subject)
        self._lag = _lag_crp_drawer(lag_crp, lag_fit, lag_axis, subject)
        self._patterns: OrderedDict = OrderedDict()
        self.jobs = Jobs(background)

        self.column = widgets.Dropdown(options=columns, value=column, description="colour by")
        self.column.add_class("wb-colour-by")
        self.grid = HeadGrid(self._grid_figure(column), self.select)
        self.head_info = widgets.HTML()
        self.head_info.add_class("wb-head-info")
        self.prompt = widgets.Dropdown(options=[*self._prompts, OWN_TEXT], description="prompt",
                                       layout=widgets.Layout(width="460px"))
        self.text = widgets.Textarea(value=DEFAULT_TEXT, rows=3, layout=widgets.Layout(width="640px"),
                                     placeholder="text to run the selected head on")
        self.run_button = widgets.Button(description="Run", button_style="primary", icon="play",
                                         tooltip="show the selected head's attention on this text")
        self.pattern = figure_widget()
        self.pattern.add_class("wb-pattern")
        self.lag_figure = figure_widget() if self._lag is not None else None
        if self.lag_figure is not None:
            self.lag_figure.add_class("wb-lag-crp")
        panes = [self.pattern] + ([self.lag_figure] if self.lag_figure is not None else [])

        self.column.observe(lambda change: self.colour_by(change["new"]), names="value")
        self.prompt.observe(lambda change: self._show_pattern(), names="value")
        self.run_button.on_click(lambda _: self.run_text(self.text.value))
        if head is None:
            top = atlas.top(column, 1)
            head = (int(top.iloc[0]["layer"]), int(top.iloc[0]["head"])) if len(top) else (0, 0)
        super().__init__([
            widgets.HTML(f"<b>{html.escape(self._title())}</b>: click a head"),
            self.column,
            widgets.HBox([self.grid.figure, self.head_info]),
            widgets.HBox([self.prompt, self.run_button]), self.text,
            self.jobs.view, widgets.HBox(panes),
        ])
        self.add_class("wb-head-explorer")
        self.selected: tuple[int, int] = (-1, -1)
        self.select(*head)

    # ------------------------------------------------------------------ actions
    def colour_by(self, column: str) -> None:
        """Colour the grid by Atlas column ``column`` (also what the dropdown does)."""
        if self.column.value != column:
            self.column.value = column  # the observer comes back here
            return
        self.grid.show(self._grid_figure(column))

    def select(self, layer: int, head: int) -> None:
        """Show head (layer, head): outline it, list its scores, plot its attention and lag-CRP (what a click does)."""
        self.subject.check_head(layer, head)
        self.selected = (int(layer), int(head))
        self.grid.mark([self.selected])
        self.head_info.value = self._scores_html(*self.selected)
        self._show_pattern()
        if self._lag is not None:
            replace_figure(self.lag_figure, self._lag(*self.selected))

    def run_text(self, text: str) -> None:
        """Run the selected head on ``text`` (what the Run button does with the text box)."""
        self.subject.encode(text)  # empty or too long: a clear error here, before any work
        self.text.value = text
        self._prompts[OWN_TEXT] = text
        self._drop_cached(OWN_TEXT)
        if self.prompt.value != OWN_TEXT:
            self.prompt.value = OWN_TEXT  # the observer shows the pattern
        else:
            self._show_pattern()

    def wait(self, timeout: float | None = 120.0) -> "HeadExplorer":
        """Block until the pattern view shows the current head and prompt; re-raise a failure."""
        self.jobs.wait(timeout)
        return self

    # ------------------------------------------------------------------ views
    def _title(self) -> str:
        return f"Head explorer: {self.atlas.meta.get('model', self.subject.name)}"

    def _grid_figure(self, column: str) -> go.Figure:
        return self.atlas.plot([column])[column]

    def _scores_html(self, layer: int, head: int) -> str:
        """The head's identity and every score with its interval (where it has one) and rank among all heads (definition on hover)."""
        table = self.atlas.table
        row = table[(table["layer"] == layer) & (table["head"] == head)].iloc[0]
        described = self.atlas.meta.get("columns", {})
        lines = []
        for name in self.atlas.score_columns:
            value = row[name]
            finite = table[name].dropna()
            rank = "" if np.isnan(value) else f"{int((finite > value).sum()) + 1} of {len(finite)}"
            tip = html.escape(described.get(name, {}).get("definition", ""), quote=True)
            bounds = (format_interval(row[f"{name}_lo"], row[f"{name}_hi"])
                      if self.atlas.interval_info(name) else "")
            lines.append(f"<tr title='{tip}'><td>{html.escape(name)}</td><td style='text-align:right'>"
                         f"{format_value(float(value))}</td><td style='color:#6b7380'>{bounds}</td>"
                         f"<td style='color:#6b7380'>{rank}</td></tr>")
        return (f"<div style='padding:0 1em'><h3 style='margin:0.2em 0'>L{layer}H{head}</h3>"
                f"<div>KV group {row['kv_group']}, {html.escape(row['layer_type'])} attention</div>"
                "<table><tr><th>score</th><th>value</th><th>interval</th><th>rank</th></tr>" + "".join(lines) + "</table></div>")

    def _show_pattern(self) -> None:
        layer, head = self.selected
        name = self.prompt.value
        if name == OWN_TEXT and OWN_TEXT not in self._prompts:
            self._prompts[OWN_TEXT] = self.text.value
        source = self._prompts[name]

        def work(report):
            ids = self.subject.encode(source) if isinstance(source, str) else source
            key = (name, layer)
            if key not in self._patterns:
                report(0.2, f"capturing layer {layer}'s attention on {len(ids)} tokens")
                from ..patterns import capture

                self._patterns[key] = capture(self.subject, ids, layers=[layer]).patterns[layer][0]
                while len(self._patterns) > CACHED_LAYERS:
                    self._patterns.popitem(last=False)
            self._patterns.move_to_end(key)
            report(0.8, "drawing")
            return pattern_figure(self._patterns[key][head].numpy(), self.subject.to_str_tokens(ids),
                                  f"L{layer}H{head} attention: {name}")

        self.jobs.run(f"L{layer}H{head} on {name}", work, lambda fig: replace_figure(self.pattern, fig))

    def _drop_cached(self, name: str) -> None:
        for key in [k for k in self._patterns if k[0] == name]:
            del self._patterns[key]

    @staticmethod
    def _default_prompts(subject) -> dict:
        from ..stimuli import repeated_random_tokens

        ids = repeated_random_tokens(subject, seq_len=20, n_repeats=2, batch=1, seed=0).input_ids[0]
        return {REPEATED: ids, "a repeated sentence": DEFAULT_TEXT}


def _lag_crp_drawer(curve, fit, axis: str, subject):
    """``(layer, head) -> figure`` of that head's lag curve (and CMR fit), or None without a curve."""
    if curve is None:
        if fit is not None:
            raise InputError("lag_fit needs lag_crp, the lag curves it was fitted to")
        return None
    shape = np.shape(getattr(curve, "mean", None))
    if len(shape) != 3 or shape[:2] != (subject.n_layers, subject.n_heads) or not hasattr(curve, "lags"):
        raise InputError(f"lag_crp must be a LagCurve with mean [layers={subject.n_layers}, heads={subject.n_heads}, "
                         f"lag], got mean of shape {shape}: pass e.g. head_effects(subject).score_curve")
    try:
        from ..viz.episodic import lag_crp_figure
    except ImportError as e:
        raise InputError(f"the lag-CRP panel needs workbench.viz.episodic ({e}): leave lag_crp out") from None
    return lambda layer, head: lag_crp_figure(curve, [(layer, head)], fit=fit, yaxis=axis,
                                              title=f"L{layer}H{head} lag curve")

"""AblationPlayground: pick heads, an intervention and a prompt; see the next-token distribution before and after."""

from __future__ import annotations

import html

import ipywidgets as widgets
import numpy as np
import torch

from ..errors import InputError
from ..inputs import as_heads
from ..viz.heads import format_value, head_heatmap
from .background import Jobs
from .figure_widget import figure_widget, replace_figure
from .head_grid import HeadGrid
from .next_token import compare_next_token, kl_divergence, next_token_figure

INTERVENTIONS = {
    "zero": "zero the head's output z",
    "mean": "replace z by its mean over the reference text's positions",
    "query-zero": "zero the query: uniform attention over the prefix",
    "scale": "multiply z by the factor",
}
DEFAULT_PROMPT = "When Mary and John went to the store, John gave a drink to"


def parse_heads(text: str, subject=None) -> list[tuple[int, int]]:
    """'18.6, 17.3' (or 'L18H6 L17H3') -> [(18, 6), (17, 3)], checked against ``subject`` if given."""
    heads = as_heads(text)
    if subject is not None:
        for layer, head in heads:
            subject.check_head(layer, head)
    return list(dict.fromkeys(heads))


def format_heads(heads) -> str:
    """[(18, 6), (17, 3)] -> '18.6, 17.3'."""
    return ", ".join(f"{l}.{h}" for l, h in heads)


class AblationPlayground(widgets.VBox):
    """Choose heads (click the grid or type '18.6, 17.3'), an intervention (zero / mean / query-zero / scale) and a
    prompt: the next-token distribution and the logit changes before vs after update live.

    Numbers come from ``workbench.interventions.apply`` around ``subject.logits``. Mean ablation replaces each
    head's output by its mean over every position of ``reference`` (texts or ids; default: the prompt itself).
    ``atlas`` (optional) colours the grid by a score to help pick heads. ``wait()`` blocks until the view is current.
    """

    def __init__(self, subject, heads=(), intervention: str = "zero", prompt: str = DEFAULT_PROMPT,
                 factor: float = 2.0, group: bool = False, atlas=None, column: str | None = None,
                 reference=None, k: int = 10, background: bool = True):
        if intervention not in INTERVENTIONS:
            raise InputError(f"unknown intervention {intervention!r}: choose from {', '.join(INTERVENTIONS)}")
        if atlas is not None and (atlas.n_layers, atlas.n_heads) != (subject.n_layers, subject.n_heads):
            raise InputError(f"the Atlas has {atlas.n_layers} x {atlas.n_heads} heads but {subject.name} has "
                             f"{subject.n_layers} x {subject.n_heads}: pass the Atlas of this Subject")
        self.subject, self.atlas, self.reference, self.k = subject, atlas, reference, int(k)
        self.result = None  # the comparison table of the last run (a DataFrame)
        self.kl: float | None = None
        self.logits_before = self.logits_after = None
        self._before_cache: dict = {}
        self.jobs = Jobs(background)

        heads = parse_heads(heads, subject) if isinstance(heads, str) else as_heads(heads)
        for layer, head in heads:
            subject.check_head(layer, head)
        self.heads = widgets.Text(value=format_heads(heads),
                                  description="heads", placeholder="18.6, 17.3", continuous_update=False,
                                  layout=widgets.Layout(width="420px"))
        self.intervention = widgets.ToggleButtons(options=list(INTERVENTIONS), value=intervention,
                                                  tooltips=list(INTERVENTIONS.values()))
        self.factor = widgets.FloatText(value=float(factor), description="factor", layout=widgets.Layout(width="160px"))
        self.group = widgets.Checkbox(value=bool(group), description="whole KV group", indent=False)
        self.prompt = widgets.Textarea(value=prompt, rows=2, continuous_update=False, description="prompt",
                                       layout=widgets.Layout(width="640px"))
        self.column = None
        if atlas is not None and atlas.score_columns:
            column = column or ("induction" if "induction" in atlas.score_columns else atlas.score_columns[0])
            self.column = widgets.Dropdown(options=atlas.score_columns, value=column, description="colour by")
            self.column.observe(lambda change: self.grid.show(self._grid_figure()), names="value")
        self.grid = HeadGrid(self._grid_figure(), self.toggle, css_class="wb-ablation-grid")
        self.summary = widgets.HTML()
        self.figure = figure_widget()
        self.figure.add_class("wb-next-token")

        for control in (self.heads, self.intervention, self.factor, self.group, self.prompt):
            control.observe(lambda change: self.update(), names="value")
        super().__init__([
            widgets.HTML(f"<b>Ablation playground: {html.escape(subject.name)}</b>: click heads or type them"),
            *([self.column] if self.column is not None else []), self.grid.figure, self.heads,
            widgets.HBox([self.intervention, self.factor, self.group]), self.prompt, self.jobs.view,
            self.summary, self.figure,
        ])
        self.add_class("wb-ablation-playground")
        self.update()

    # ------------------------------------------------------------------ actions
    def toggle(self, layer: int, head: int) -> None:
        """Add head (layer, head) to the chosen heads, or remove it (what a click on the grid does)."""
        chosen = parse_heads(self.heads.value, self.subject)
        chosen = [x for x in chosen if x != (layer, head)] if (layer, head) in chosen else chosen + [(layer, head)]
        self.heads.value = format_heads(chosen)  # the observer recomputes

    def specs(self) -> list:
        """The intervention specs the current controls describe (what ``interventions.apply`` receives)."""
        from ..interventions import ReplaceHead, ScaleHead, ZeroHead, ZeroQuery, expand_heads, mean_values
        from ..patterns import capture

        heads, group, kind = parse_heads(self.heads.value, self.subject), self.group.value, self.intervention.value
        if not heads:
            return []
        if kind == "zero":
            return [ZeroHead(heads, group=group)]
        if kind == "query-zero":
            return [ZeroQuery(heads, group=group)]
        if kind == "scale":
            return [ScaleHead(heads, factor=float(self.factor.value), group=group)]
        chosen = expand_heads(self.subject, ZeroHead(heads, group=group))
        reference = self.reference if self.reference is not None else self.prompt.value
        texts = [reference] if isinstance(reference, str) or not isinstance(reference, (list, tuple)) else reference
        zs = [capture(self.subject, text, heads=chosen, patterns=False, z=True).z for text in texts]
        z = {layer: torch.cat([part[layer].reshape(1, -1, *part[layer].shape[2:]) for part in zs], dim=1)
             for layer in zs[0]}  # every position of every reference text (no padding), as one batch row
        return [ReplaceHead(chosen, values=mean_values(z, chosen))]

    def update(self) -> None:
        """Recompute the comparison for the current controls (called on every change)."""
        self.grid.mark(_safe_heads(self.heads.value, self.subject))
        self.factor.layout.visibility = "visible" if self.intervention.value == "scale" else "hidden"
        prompt = self.prompt.value

        def work(report):
            from ..interventions import apply

            specs = self.specs()  # bad head text fails here, shown in the widget
            what = self._describe(specs)
            if prompt not in self._before_cache:
                report(0.1, "running the prompt unchanged")
                self._before_cache = {prompt: self.subject.logits(prompt)[0, -1].cpu()}
            before = self._before_cache[prompt]
            report(0.5, "running it with the intervention")
            with apply(self.subject, *specs):
                after = self.subject.logits(prompt)[0, -1].cpu()
            return what, prompt, before, after

        self.jobs.run("computing next-token distributions", work, self._show)

    def _describe(self, specs) -> str:
        if not specs:
            return "no heads chosen: after = before"
        kind = self.intervention.value
        return (f"{kind} {self.heads.value}" + (f" (factor {self.factor.value:g})" if kind == "scale" else "")
                + (" with their KV groups" if self.group.value else ""))

    def wait(self, timeout: float | None = 120.0) -> "AblationPlayground":
        """Block until the view shows the current controls' result; re-raise a failure."""
        self.jobs.wait(timeout)
        return self

    # ------------------------------------------------------------------ views
    def _show(self, computed) -> None:
        what, prompt, before, after = computed
        table = compare_next_token(before, after, self.subject.tokenizer, self.k)
        self.result, self.kl, self.logits_before, self.logits_after = table, kl_divergence(before, after), before, after
        top_b, top_a = before.argmax().item(), after.argmax().item()
        tok = self.subject.tokenizer.decode
        self.summary.value = (
            f"<div>{html.escape(what)}. Top token {html.escape(repr(tok([top_b])))} -> "
            f"{html.escape(repr(tok([top_a])))}; KL(before || after) = {format_value(self.kl)} nats.</div>")
        replace_figure(self.figure, next_token_figure(table, f"next token after ...{prompt[-60:]!r}"))

    def _grid_figure(self):
        if self.column is not None:
            return self.atlas.plot([self.column.value])[self.column.value]
        zeros = np.zeros((self.subject.n_layers, self.subject.n_heads))
        return head_heatmap(zeros, "click heads to choose them", colorscale=[[0, "#eef1f5"], [1, "#eef1f5"]])


def _safe_heads(text: str, subject) -> list[tuple[int, int]]:
    """The heads of ``text`` for outlining, or none while the text does not parse (the job reports the error)."""
    try:
        return parse_heads(text, subject)
    except InputError:
        return []

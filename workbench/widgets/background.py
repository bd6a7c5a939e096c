"""Run a widget's computations off the kernel's main thread, with a progress bar and a status line in the widget.

Jobs run on one worker thread shared by every dashboard (model calls never overlap, and the kernel keeps
handling clicks and cell executions meanwhile). Interventions are context variables, so a job on the
worker never sees hooks active in the notebook's own code, nor the other way round. The newest job of a
dashboard wins: an older one stops at its next progress report and its result is never shown.
"""

from __future__ import annotations

import html
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable

import ipywidgets as widgets

from ..errors import WorkbenchError

_EXECUTOR = ThreadPoolExecutor(max_workers=1, thread_name_prefix="workbench-widgets")


class Superseded(Exception):
    """Raised inside a job when a newer job of the same dashboard has started."""


class Jobs:
    """A progress bar + status line for one dashboard, and the runner of its jobs (newest wins)."""

    def __init__(self, background: bool = True):
        self.background = background
        self.bar = widgets.FloatProgress(value=0.0, min=0.0, max=1.0, bar_style="info",
                                         layout=widgets.Layout(width="160px", visibility="hidden"))
        self.status = widgets.HTML("")
        self.view = widgets.HBox([self.bar, self.status], layout=widgets.Layout(align_items="center"))
        self.error: BaseException | None = None
        self._generation = 0
        self._lock = threading.Lock()
        self._futures: list[Future] = []

    def run(self, label: str, work: Callable[[Callable[[float, str], None]], object],
            show: Callable[[object], None]) -> None:
        """Run ``work(report)`` (report(fraction, text) updates the bar), then ``show(result)``, unless superseded."""
        with self._lock:
            self._generation += 1
            generation = self._generation
            self._futures = [f for f in self._futures if not f.done()]
        self._report(generation, 0.0, label)
        if not self.background:
            self._job(generation, label, work, show)
            return
        future = _EXECUTOR.submit(self._job, generation, label, work, show)
        with self._lock:
            self._futures.append(future)

    def wait(self, timeout: float | None = 60.0) -> None:
        """Block until every submitted job has finished; re-raise the error of the last one, if it failed."""
        with self._lock:
            pending = list(self._futures)
        for future in pending:
            future.result(timeout=timeout)
        if self.error is not None:
            raise self.error

    @property
    def busy(self) -> bool:
        """Whether a job of this dashboard is queued or running."""
        return any(not f.done() for f in self._futures)

    def _job(self, generation: int, label: str, work, show) -> None:
        def report(fraction: float, text: str = label) -> None:
            if generation != self._generation:
                raise Superseded
            self._report(generation, fraction, text)

        try:
            report(0.0)
            result = work(report)
            report(1.0)
            show(result)
        except Superseded:
            return
        except Exception as e:  # shown in the widget; wait() re-raises it
            if generation == self._generation:
                self.error = e
                self._fail(e)
            return
        if generation == self._generation:
            self.error = None
            self.bar.layout.visibility = "hidden"
            self.status.value = ""

    def _report(self, generation: int, fraction: float, text: str) -> None:
        if generation != self._generation:
            return
        self.bar.bar_style = "info"
        self.bar.value = min(max(float(fraction), 0.0), 1.0)
        self.bar.layout.visibility = "visible"
        self.status.value = f"<span style='color:#4a5563'>{html.escape(text)}</span>"

    def _fail(self, error: BaseException) -> None:
        self.bar.layout.visibility = "hidden"
        kind = "" if isinstance(error, WorkbenchError) else f"{type(error).__name__}: "
        self.status.value = f"<span style='color:#b00020'>{html.escape(kind + str(error))}</span>"

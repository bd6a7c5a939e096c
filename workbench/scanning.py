"""``scan``: run detectors over every head of a Subject and collect them in an Atlas."""

from __future__ import annotations

import platform
import time
from importlib import metadata

from .atlas import Atlas
from .detectors import DEFAULT_DETECTORS, ScanContext, resolve
from .progress import progress
from .scores.intervals import Bootstrap


def versions() -> dict:
    """Versions of Python and the packages that shape the numbers."""
    out = {"python": platform.python_version()}
    for pkg in ("workbench", "torch", "transformers", "transformer-lens", "nnsight", "triton", "numpy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def scan(subject, detectors=DEFAULT_DETECTORS, seed: int = 0, settings: dict | None = None) -> Atlas:
    """Score every (layer, head) of ``subject`` with the named detectors; returns an Atlas with metadata.

    Scores with per-item values get a bootstrap interval (``<score>_lo``/``_hi``) over their items:
    settings ``interval_resamples`` (default 1000; 0 for none) and ``interval_level`` (default 0.95), seeded with ``seed``.
    """
    started = time.time()
    chosen = resolve(detectors)
    ctx = ScanContext(seed=seed, settings=dict(settings or {}))
    resamples = ctx.settings.get("interval_resamples", 1000)
    boot = Bootstrap(resamples, ctx.settings.get("interval_level", 0.95), seed) if resamples else None
    atlas = Atlas.for_model(subject.n_layers, subject.n_heads, subject.n_kv_heads, subject.layer_types,
                            meta={**subject.facts(), "seed": seed, "versions": versions()})
    timings = {}
    for det in progress(chosen, desc=f"scan {subject.name}", unit="detector"):
        t0 = time.time()
        for name, values in det.compute(subject, ctx).items():
            col = det.columns[name]
            atlas = atlas.with_scores(name, values, definition=col.describe(ctx.stimuli), source=col.source,
                                      range=col.range, bootstrap=boot)
        timings[det.name] = round(time.time() - t0, 2)
    return atlas.with_meta(detectors=[d.name for d in chosen], stimuli=ctx.stimuli, settings=ctx.settings,
                           detector_seconds=timings, wall_time_s=round(time.time() - started, 2),
                           created=time.strftime("%Y-%m-%dT%H:%M:%S%z"))

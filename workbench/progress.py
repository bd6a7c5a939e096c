"""Progress bars: tqdm's notebook-aware front end, silenced with WORKBENCH_PROGRESS=0."""

from __future__ import annotations

import os

from tqdm.auto import tqdm as _tqdm


def progress(iterable=None, **kwargs):
    """Return a tqdm bar (notebook widget in Jupyter, text in a terminal) unless disabled by the environment."""
    kwargs.setdefault("disable", os.environ.get("WORKBENCH_PROGRESS", "1") == "0")
    kwargs.setdefault("dynamic_ncols", True)
    return _tqdm(iterable, **kwargs)

"""Workbench: attention heads and in-context memory in language models.

Top-level names are imported lazily so that ``import workbench.kernels`` stays light
(it runs on machines that have only torch and triton).
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "load": ("workbench.models", "load"),
    "Subject": ("workbench.models", "Subject"),
    "list_models": ("workbench.models", "list_models"),
    "scan": ("workbench.scanning", "scan"),
    "Atlas": ("workbench.atlas", "Atlas"),
    "compare_atlases": ("workbench.comparison", "compare_atlases"),
    "capture": ("workbench.patterns", "capture"),
    "WorkbenchError": ("workbench.errors", "WorkbenchError"),
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'workbench' has no attribute {name!r}")

"""Planted mechanisms (METHODS s13): toy worlds whose solution needs a known attention mechanism, the task adapters
that feed them to the workbench's own detectors, the ground truth, and the check of each detector against it.

``worlds`` (data generators; imported by ``workbench.toy.data``) is loaded eagerly; the analysis modules on first use.
"""

from __future__ import annotations

import importlib

from .worlds import WORLDS, ConflictWorld, PlantedItems, RetrievalWorld, TemporalWorld, world

_LAZY = {
    "planted_task": "tasks", "held_out_items": "tasks", "needle_tests": "tasks", "run_data": "tasks",
    "ground_truth": "truth", "mechanism_attention": "truth", "ablation_contrast": "truth", "group_accuracy": "truth",
    "GroundTruth": "truth", "check_detectors": "check", "detector_scores": "check", "precision_recall": "check",
    "PlantedCheck": "check",
}

__all__ = sorted(["WORLDS", "ConflictWorld", "PlantedItems", "RetrievalWorld", "TemporalWorld", "world", *_LAZY])


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

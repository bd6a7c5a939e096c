"""Retrieval heads (Wu et al. 2024), long-range heads and hidden sinks, with causal masking checks.

NIAH prompts come from ``workbench.stimuli.niah``; the Atlas detectors live in ``workbench.retrieval.detectors``
(registered through ``workbench.detectors.DETECTOR_MODULES``).
"""

from .causal import MaskingResult, masking_experiment, random_heads, top_heads
from .long_range import classify_long_range, layout_agreement, long_range_mass, uniform_long_range
from .niah import NiahRun, run_conditions, run_niah
from .niah_folder import load_niah, run_niah_grid
from .scoring import RETRIEVAL_THRESHOLD, retrieval_score, rouge1_recall
from .sinks import HiddenSinkReport, hidden_sink_report, hidden_sinks, key_importance_all

__all__ = ["HiddenSinkReport", "MaskingResult", "NiahRun", "RETRIEVAL_THRESHOLD", "classify_long_range",
           "hidden_sink_report", "hidden_sinks", "key_importance_all", "layout_agreement", "load_niah", "long_range_mass",
           "masking_experiment", "random_heads", "retrieval_score", "rouge1_recall", "run_conditions", "run_niah",
           "run_niah_grid", "top_heads", "uniform_long_range"]

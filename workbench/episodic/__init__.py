"""Episodic memory in attention: CMR simulation and fits (Ji-An et al. 2024), lag-CRPs of attention (Mistry et al. 2025),
ablations of induction / CMR-like heads, and repeat surprisal (Armeni et al. 2022).

Names are imported lazily, so ``python -m workbench.episodic.cmr`` runs its module only once.
"""

from __future__ import annotations

import importlib

_MODULES = {
    "workbench.episodic.cmr": [
        "CMRGrid", "closed_form_crp", "cmr_crp", "crp_from_fractions", "encoding_matrix", "load_grid", "save_grid",
        "simulate_grid", "simulate_recalls", "trial_lag_fractions",
    ],
    "workbench.episodic.cmr_fit": ["CMR_LIKE", "CMR_LIKE_STRICT", "FIT_LAGS", "CMRFit", "cmr_distance", "fit_cmr"],
    "workbench.episodic.lag_crp": [
        "LagCurve", "aggregate_lag_curves", "conditional_response_probability", "contiguity", "forward_asymmetry",
        "lag_values", "primacy_recency", "serial_position_curve",
    ],
    "workbench.episodic.capture": ["LAGS", "ListCapture", "PairScoreRecorder", "candidate_logprobs", "capture_lists"],
    "workbench.episodic.heads": ["HeadEffects", "head_effects", "temporal_columns"],
    "workbench.episodic.ablation": ["AblationResult", "contiguity_ablation", "random_heads", "top_heads"],
    "workbench.episodic.surprisal": ["VerbatimResult", "median_ci", "noun_surprisal", "repeat_surprisal",
                                     "verbatim_experiment"],
    "workbench.episodic.summary": ["summary_table"],
    "workbench.episodic.run": ["EpisodicRun", "run_episodic"],
}
_LAZY = {name: module for module, names in _MODULES.items() for name in names}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'workbench.episodic' has no attribute {name!r}")

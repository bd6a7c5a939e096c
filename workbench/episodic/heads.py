"""Per-head episodic-memory analysis: CMR fits of pre-softmax lag curves and temporal effects of attention.

Two stimuli, one capture each (``workbench.episodic.capture``):

- CMR (Ji-An et al. 2024, METHODS.md §3): BOS + ``cmr_items`` random tokens presented twice; each head's lag
  curve is the mean scaled pre-softmax score from second-presentation tokens to study item first occurrence +
  lag (-8..7), fitted with the CMR grid on lags -5..5 (``fit_cmr``).
- Temporal effects (Mistry et al. 2025, METHODS.md §4): BOS + the ``temporal_items`` most frequent words once,
  then in a random order; per head the Kahana lag-CRP of attention over the study list (attention to the
  study item at each lag / opportunities), its contiguity (1 <= |lag| <= 2 minus |lag| > 2) and forward
  asymmetry (CRP(+1) - CRP(-1)), and the serial-position curve of attention with its primacy and recency
  (first / last 3 items minus the middle). The model's output serial-recall curve comes from the same capture.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..stimuli.lists import frequent_token_lists, random_token_lists
from .capture import LAGS, ListCapture, capture_lists
from .cmr_fit import CMRFit, fit_cmr
from .lag_crp import LagCurve, contiguity, forward_asymmetry, primacy_recency

DEFAULTS = {"cmr_items": 50, "cmr_batch": 20, "temporal_items": 40, "temporal_batch": 20, "crp_max_lag": 8,
            "refine": False, "n_boot": 1000, "batch_size": None}
CRP_NEAR = 2
EDGE_ITEMS = 3


@dataclass
class HeadEffects:
    """Everything per head: lag curves with CIs, CMR fits, CRPs, serial-position curves, and the Atlas columns."""

    score_curve: LagCurve  # pre-softmax score by lag [L, H, lag] on the CMR stimulus
    fit: CMRFit  # per head [L, H]
    crp_lags: np.ndarray
    crp: np.ndarray  # Kahana CRP of attention [L, H, lag] on the temporal stimulus
    attn_curve: LagCurve  # post-softmax attention by lag [L, H, lag] on the temporal stimulus
    position_mean: np.ndarray  # [L, H, n_items]
    position_sem: np.ndarray
    recall_curve: LagCurve  # output next-token probability by lag (model level)
    columns: dict[str, np.ndarray]
    stimuli: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    repeat_recall_curve: LagCurve | None = None  # output next-token probability by lag on the CMR stimulus (same order)


def temporal_columns(cap: ListCapture, max_lag: int = 8) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Kahana CRP of attention per head and the contiguity, asymmetry, primacy and recency columns from it."""
    lags, crp = cap.crp(max_lag=max_lag)
    position, _ = cap.serial_position()
    primacy, recency = primacy_recency(position, k=EDGE_ITEMS)
    return lags, crp, {"contiguity": contiguity(crp, lags, near=CRP_NEAR), "asymmetry": forward_asymmetry(crp, lags, 1),
                       "primacy": primacy, "recency": recency}


def cmr_columns(fit: CMRFit) -> dict[str, np.ndarray]:
    """The CMR fit as Atlas columns."""
    return {"cmr_distance": fit.distance, "cmr_beta_enc": fit.beta_enc, "cmr_beta_rec": fit.beta_rec,
            "cmr_gamma_ft": fit.gamma_ft, "cmr_scale": fit.scale}


def head_effects(subject, *, seed: int = 0, settings: dict | None = None, extra_hooks=()) -> HeadEffects:
    """Capture both stimuli and compute every head's lag curves, CMR fit, CRP and serial-position effects (settings: ``DEFAULTS``)."""
    s = {**DEFAULTS, **{k: v for k, v in (settings or {}).items() if k in DEFAULTS}}
    cmr_lists = random_token_lists(subject, s["cmr_items"], s["cmr_batch"], seed)
    cmr_cap = capture_lists(subject, cmr_lists, lags=LAGS, batch_size=s["batch_size"], extra_hooks=extra_hooks)
    score_curve = cmr_cap.lag_curve("scores", n_boot=s["n_boot"], seed=seed)
    fit = fit_cmr(score_curve.mean, score_curve.lags, refine=s["refine"])
    tmp_lists = frequent_token_lists(subject, s["temporal_items"], s["temporal_batch"], seed)
    tmp_cap = capture_lists(subject, tmp_lists, lags=LAGS, batch_size=s["batch_size"], extra_hooks=extra_hooks)
    crp_lags, crp, temporal = temporal_columns(tmp_cap, s["crp_max_lag"])
    position_mean, position_sem = tmp_cap.serial_position()
    return HeadEffects(score_curve, fit, crp_lags, crp, tmp_cap.lag_curve("attn", n_boot=s["n_boot"], seed=seed),
                       position_mean, position_sem, tmp_cap.recall_curve(n_boot=s["n_boot"], seed=seed),
                       {**cmr_columns(fit), **temporal},
                       {"cmr": cmr_cap.settings, "temporal": tmp_cap.settings}, s,
                       cmr_cap.recall_curve(n_boot=s["n_boot"], seed=seed))

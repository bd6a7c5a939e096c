"""The ``episodic`` detector: CMR fits and temporal effects of attention as Atlas columns (opt-in: ``--detectors episodic``)."""

from __future__ import annotations

from ..detectors import Column, Detector, register
from .heads import head_effects

_CMR = "Ji-An et al. 2024 (corxyz/icl-cmr fit_attn_score.py); METHODS.md s3"
_TEMPORAL = "Mistry et al. 2025; Kahana 1996 lag-CRP; METHODS.md s4"
_CMR_STIM = "pre-softmax score lag curve (lags -5..5) on BOS + 50 random tokens x 2, batch 20"
_TMP_STIM = "on BOS + the 40 most frequent words once, then in random order, batch 20"

COLUMNS = {
    "cmr_distance": Column(f"CMR distance mean((c'-a')^2)/var(a') of the best CMR grid CRP to the head's {_CMR_STIM}; "
                           "CMR-like < 0.5 (strict < 0.1)", _CMR, "[0, inf)"),
    "cmr_beta_enc": Column("best-fit CMR encoding drift rate beta_enc", _CMR, "[0.05, 1]"),
    "cmr_beta_rec": Column("best-fit CMR retrieval drift rate beta_rec", _CMR, "[0, 1]"),
    "cmr_gamma_ft": Column("best-fit CMR item-to-context association gamma_FT", _CMR, "[0, 1]"),
    "cmr_scale": Column("best-fit inverse temperature s scaling the CMR CRP to the head's scores", _CMR, "[0, inf)"),
    "contiguity": Column("Kahana lag-CRP of attention (mass on study item at lag / opportunities): mean CRP at "
                         f"1<=|lag|<=2 minus mean at 2<|lag|<=8, {_TMP_STIM}", _TEMPORAL, "[-1, 1]"),
    "asymmetry": Column(f"forward asymmetry of the attention lag-CRP, CRP(+1) - CRP(-1), {_TMP_STIM}", _TEMPORAL,
                        "[-1, 1]"),
    "primacy": Column("serial-position curve of attention from test items to study items: mean of the first 3 items "
                      f"minus the middle items, {_TMP_STIM}", "Mistry et al. 2025; Murdock 1962", "[-1, 1]"),
    "recency": Column(f"serial-position curve of attention: mean of the last 3 study items minus the middle items, "
                      f"{_TMP_STIM}", "Mistry et al. 2025; Murdock 1962", "[-1, 1]"),
}


def _compute(subject, ctx):
    effects = ctx.get("episodic", lambda: head_effects(subject, seed=ctx.seed, settings=ctx.settings))
    ctx.stimuli.update({f"episodic_{k}": v for k, v in effects.stimuli.items()})
    return effects.columns


register(Detector("episodic", COLUMNS, _compute,
                  "CMR fits (Ji-An et al. 2024) and temporal effects of attention (Mistry et al. 2025) per head"))

"""The numbers that answer the papers' claims: where CMR-like heads sit, their β, overlap with induction heads,
temporal effects, repeat surprisal and ablation effects, as one (section, metric, value, note) table."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from .cmr_fit import CMR_LIKE, CMR_LIKE_STRICT

HUMAN_BETA_ENC = (0.2, 0.8)  # human CMR fits (Ji-An et al. 2024; METHODS.md s3)
HUMAN_BETA_REC = (0.2, 0.95)
INDUCTION_HEAD = 0.3  # ARENA's threshold on the induction score (METHODS.md s1)


def depth_profile(mask: np.ndarray) -> dict[str, float]:
    """Share of the heads in ``mask`` (L, H) in the first, middle and last third of the layers, and their mean relative depth."""
    n_layers = mask.shape[0]
    layer = np.nonzero(mask)[0]
    depth = layer / max(n_layers - 1, 1)
    thirds = np.minimum((np.arange(n_layers) * 3) // n_layers, 2)[layer]
    n = max(len(layer), 1)
    return {"early": float((thirds == 0).sum() / n), "middle": float((thirds == 1).sum() / n),
            "late": float((thirds == 2).sum() / n), "mean_depth": float(depth.mean()) if len(layer) else float("nan")}


def head_rows(columns: dict[str, np.ndarray], induction: np.ndarray | None = None) -> list[dict]:
    """Summary rows from the per-head columns (and the induction score, if given)."""
    d = np.asarray(columns["cmr_distance"], dtype=np.float64)
    rows = []

    def add(metric, value, note=""):
        rows.append({"section": "heads", "metric": metric, "value": value, "note": note})

    total = d.size
    for t in (CMR_LIKE, CMR_LIKE_STRICT):
        like = d < t
        prof = depth_profile(like)
        add(f"CMR-like heads (distance < {t})", int(like.sum()), f"of {total}")
        add(f"  in early / middle / late thirds (< {t})",
            f"{prof['early']:.2f} / {prof['middle']:.2f} / {prof['late']:.2f}", "share of those heads")
        add(f"  mean relative depth (< {t})", round(prof["mean_depth"], 3), "0 = first layer, 1 = last")
    strict = d < CMR_LIKE_STRICT
    enc, rec = np.asarray(columns["cmr_beta_enc"])[strict], np.asarray(columns["cmr_beta_rec"])[strict]
    human = (enc >= HUMAN_BETA_ENC[0]) & (enc <= HUMAN_BETA_ENC[1]) & (rec >= HUMAN_BETA_REC[0]) & (rec <= HUMAN_BETA_REC[1])
    if strict.any():
        add("median beta_enc / beta_rec of heads < 0.1", f"{np.median(enc):.2f} / {np.median(rec):.2f}",
            "human fits: beta_enc 0.2-0.8, beta_rec 0.2-0.95")
        add("share of heads < 0.1 with both betas in the human range", round(float(human.mean()), 3))
    for name in ("contiguity", "asymmetry", "primacy", "recency"):
        v = np.asarray(columns[name], dtype=np.float64)
        add(f"{name}: median / max over heads", f"{np.nanmedian(v):.4f} / {np.nanmax(v):.4f}",
            f"{int((v > 0).sum())} heads > 0")
    if induction is not None:
        ind = np.asarray(induction, dtype=np.float64)
        heads = ind > INDUCTION_HEAD
        add(f"induction heads (score > {INDUCTION_HEAD})", int(heads.sum()))
        if heads.any():
            add("  of them CMR-like (< 0.5 / < 0.1)", f"{int((d[heads] < CMR_LIKE).sum())} / "
                f"{int((d[heads] < CMR_LIKE_STRICT).sum())}")
        ok = np.isfinite(d) & np.isfinite(ind)
        rho = spearmanr(ind[ok], -d[ok]).statistic
        add("Spearman(induction, -CMR distance)", round(float(rho), 3), f"over {int(ok.sum())} fitted heads")
    return rows


def summary_table(columns: dict | None, induction=None, recall=None, ablations: dict | None = None,
                  surprisal: pd.DataFrame | None = None, *, icl: dict | None = None) -> pd.DataFrame:
    """One table of the run's headline numbers; each argument adds its section when present (``recall``: a LagCurve or {label: LagCurve})."""
    rows = [] if columns is None else head_rows(columns, induction)
    for label, curve in ({"": recall} if recall is not None and not isinstance(recall, dict) else recall or {}).items():
        lags, mean = np.asarray(curve.lags), np.asarray(curve.mean)
        plus = int(np.flatnonzero(lags == 1)[0])
        others = mean[(lags != 1) & (lags != 0)]
        ci = "" if curve.ci_low is None else f"CI {curve.ci_low[plus]:.4f}-{curve.ci_high[plus]:.4f}; "
        rows.append({"section": "outputs", "metric": "P(next = study item at lag +1)" + (f", {label}" if label else ""),
                     "value": round(float(mean[plus]), 4), "note": f"{ci}other lags mean {np.nanmean(others):.4f}"})
    for by, table in (ablations or {}).items():
        for r in table.itertuples():
            rows.append({"section": f"ablation by {by}", "metric": r.condition,
                         "value": f"P(+1) {r.recall_plus1:.4f}, output contiguity {r.recall_contiguity:.4f}, "
                                  f"attention contiguity {r.attn_contiguity:.5f} (contiguous heads {r.attn_contiguity_top:.4f})",
                         "note": f"{r.n_ablated} heads ablated; CI {r.recall_plus1_low:.4f}-{r.recall_plus1_high:.4f}; "
                                 f"{r.n_measured} heads measured"})
    for by, table in (icl or {}).items():
        for r in table.itertuples():
            rows.append({"section": f"ICL score, ablation by {by}", "metric": r.condition,
                         "value": round(float(r.icl_score), 3),
                         "note": f"loss(token 500) - loss(token 50), nats; SEM {r.icl_score_sem:.3f}; change vs intact "
                                 f"{r.change:+.3f} (paired SEM {r.change_sem:.3f}); {r.n_ablated} heads ablated"})
    if surprisal is not None:
        for r in surprisal.itertuples():
            rows.append({"section": "repeat surprisal", "metric": f"{r.condition}, {r.list_len} nouns, "
                         f"{r.intervening}{' (scrambled)' if r.scramble else ''}",
                         "value": round(float(r.median), 1), "note": f"95% CI {r.ci_low:.1f}-{r.ci_high:.1f}, n={r.n}"})
    return pd.DataFrame(rows, columns=["section", "metric", "value", "note"])

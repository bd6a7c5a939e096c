"""Test-retest: scan with K stimulus seeds and measure how stable each score is across those replicates.

Per score: the Spearman rank correlation between every pair of replicates over all heads, and over the
heads past the paper's threshold in either replicate (where ties at zero do not dominate), and the heads
whose class (past / not past the threshold) differs between replicates. Thresholds (``THRESHOLDS``) are
the papers': induction > 0.3 (ARENA; Olsson et al. 2022), retrieval > 0.1 (Wu et al. 2024), CMR distance
< 0.5 (Ji-An et al. 2024), sink alpha_0 > 0.3 (Gu et al. 2024's eps, on ``sink_mass``). Scores without a
paper threshold get the correlations only.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Sequence

import numpy as np

from .atlas import Atlas
from .detectors import DEFAULT_DETECTORS
from .errors import InputError
from .progress import progress
from .scanning import scan
from .stimuli.niah import KINDS

THRESHOLDS: dict[str, tuple[float, str, str]] = {  # score: (threshold, "above" | "below", source)
    "induction": (0.3, "above", "ARENA; Olsson et al. 2022"),
    "retrieval": (0.1, "above", "Wu et al. 2024"),
    **{f"retrieval_{kind}": (0.1, "above", "Wu et al. 2024") for kind in KINDS},
    "cmr_distance": (0.5, "below", "Ji-An et al. 2024"),
    "sink_mass": (0.3, "above", "Gu et al. 2024 (eps on alpha_0)"),
}


def spearman(a, b) -> float:
    """Spearman's rank correlation of two score arrays over the heads finite in both (ties: average ranks); NaN if < 3 heads or a constant array."""
    from scipy.stats import spearmanr

    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.ptp(a[ok]) == 0 or np.ptp(b[ok]) == 0:
        return float("nan")
    return float(spearmanr(a[ok], b[ok]).statistic)


def past(values, threshold: float, direction: str) -> np.ndarray:
    """Bool: the values past the threshold (> for 'above', < for 'below'); NaN is never past."""
    values = np.asarray(values, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return values > threshold if direction == "above" else values < threshold


def agreement(a, b, threshold: float | None = None, direction: str = "above") -> dict:
    """Spearman over all heads and, with a threshold, over the heads past it in either array; heads past it in both / either."""
    out = {"spearman": spearman(a, b)}
    if threshold is not None:
        pa, pb = past(a, threshold, direction), past(b, threshold, direction)
        either = pa | pb
        out.update(spearman_past=spearman(np.asarray(a)[either], np.asarray(b)[either]),
                   past_both=int((pa & pb).sum()), past_either=int(either.sum()))
    return out


def _head_name(layer: int, head: int) -> str:
    return f"L{layer}H{head}"


def retest(atlases: Sequence[Atlas], thresholds: dict | None = None) -> dict:
    """Per score present in every replicate: pairwise Spearman (all heads; heads past the threshold), heads past it per replicate, and heads whose class flips."""
    atlases = list(atlases)
    if len(atlases) < 2:
        raise InputError(f"test-retest needs at least 2 replicates, got {len(atlases)}")
    thresholds = THRESHOLDS if thresholds is None else thresholds
    columns = [c for c in atlases[0].score_columns if all(c in a.score_columns for a in atlases[1:])]
    out = {}
    for name in columns:
        mats = [a.matrix(name) for a in atlases]
        threshold, direction, source = thresholds.get(name, (None, "above", None))
        pairs = [{"replicates": [i, j], **agreement(mats[i], mats[j], threshold, direction)}
                 for i, j in combinations(range(len(mats)), 2)]
        rhos = np.array([p["spearman"] for p in pairs])
        entry = {"spearman_mean": _rounded(np.nanmean(rhos) if np.isfinite(rhos).any() else np.nan),
                 "spearman_min": _rounded(np.nanmin(rhos) if np.isfinite(rhos).any() else np.nan),
                 "pairs": [{k: _rounded(v) if isinstance(v, float) else v for k, v in p.items()} for p in pairs]}
        if threshold is not None:
            classes = np.stack([past(m, threshold, direction) for m in mats])  # (K, L, H)
            flips = np.argwhere(classes.any(0) & ~classes.all(0))
            rho_past = np.array([p["spearman_past"] for p in pairs])
            entry.update(threshold=threshold, direction=direction, source=source,
                         spearman_past_mean=_rounded(np.nanmean(rho_past) if np.isfinite(rho_past).any() else np.nan),
                         n_past=[int(c.sum()) for c in classes], n_flips=len(flips),
                         flips={_head_name(l, h): [_rounded(m[l, h]) for m in mats] for l, h in flips})
        out[name] = entry
    return out


def _rounded(x) -> float | None:
    """A float rounded to 4 digits for the metadata; None for NaN (JSON has no NaN)."""
    x = float(x)
    return None if not np.isfinite(x) else round(x, 4)


@dataclass
class Replicates:
    """A scan repeated with K stimulus seeds: the first seed's Atlas (with the test-retest in its metadata), every replicate, the summary."""

    atlas: Atlas
    atlases: list[Atlas]
    seeds: list[int]
    retest: dict


def scan_replicates(subject, replicates: int, detectors=DEFAULT_DETECTORS, seed: int = 0,
                    settings: dict | None = None, out=None) -> Replicates:
    """Scan ``replicates`` times with stimulus seeds seed, seed+1, ...; the seed-``seed`` Atlas gets meta test_retest (``retest``) and replicate_seeds.

    With ``out``, each replicate's Atlas is saved to ``out/seed-<s>`` as soon as it is scanned.
    """
    if isinstance(replicates, bool) or not isinstance(replicates, (int, np.integer)) or replicates < 2:
        raise InputError(f"replicates must be an integer >= 2 (one scan per stimulus seed), got {replicates!r}")
    seeds = [seed + i for i in range(int(replicates))]
    atlases = []
    for s in progress(seeds, desc="replicates", unit="scan"):
        atlases.append(scan(subject, detectors, seed=s, settings=settings))
        if out is not None:
            atlases[-1].save(Path(out) / f"seed-{s}")
    summary = retest(atlases)
    note = {}
    if (settings or {}).get("sink_texts"):
        note["test_retest_note"] = ("the natural-text prompts (--text) are the same in every replicate: scores "
                                    "computed on them (sink, long_range, sink_hidden) do not vary with the seed")
    atlas = atlases[0].with_meta(replicate_seeds=seeds, test_retest=summary, **note)
    return Replicates(atlas, atlases, seeds, summary)

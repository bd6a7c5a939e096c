"""Causal check: mask the top-k heads of a score vs k random heads outside the scored set (Wu et al. 2024, Fig. 6).

Each family (e.g. 'retrieval', 'induction') contributes its top-k heads and ``n_random`` seeded draws
of k heads among the heads scoring at or below its threshold (and not in its top k). All conditions
run on the same held-out tests and share one prefill per batch (masking is query zeroing on the
decoded tokens, as in the authors' code).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from ..errors import InputError
from ..stimuli.niah import NeedleTest
from .niah import NiahRun, run_conditions

Head = tuple[int, int]


def top_heads(scores: np.ndarray, k: int) -> list[Head]:
    """The k heads with the highest scores (ties: lower layer, then lower head, first), NaN last."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2:
        raise InputError(f"scores must be a (layers, heads) array, got shape {s.shape}")
    if not 1 <= k <= s.size:
        raise InputError(f"k must lie in 1..{s.size}, got {k}")
    flat = np.where(np.isnan(s), -np.inf, s).ravel()
    order = np.argsort(-flat, kind="stable")[:k]
    return [tuple(int(x) for x in divmod(int(i), s.shape[1])) for i in order]


def random_heads(scores: np.ndarray, k: int, threshold: float, exclude: Sequence[Head], n_draws: int,
                 seed: int) -> list[list[Head]]:
    """``n_draws`` seeded draws of k distinct heads among those with score <= threshold, not in ``exclude``."""
    s = np.asarray(scores, dtype=np.float64)
    skip = set(map(tuple, exclude))
    pool = [(l, h) for l in range(s.shape[0]) for h in range(s.shape[1])
            if not s[l, h] > threshold and (l, h) not in skip]
    if len(pool) < k:
        raise InputError(f"only {len(pool)} heads score <= {threshold}: cannot draw {k} random ones; lower k")
    rng = np.random.default_rng(seed)
    return [sorted(pool[i] for i in rng.choice(len(pool), size=k, replace=False)) for _ in range(n_draws)]


@dataclass
class MaskingResult:
    """Accuracy per condition (a row each) and, per family, top-k vs random drops."""

    table: pd.DataFrame
    runs: dict[str, NiahRun]

    def summary(self) -> pd.DataFrame:
        """Per family: intact accuracy, top-k accuracy, random accuracy (mean, sd, min, max over draws) and drops."""
        t = self.table
        intact = float(t.loc[t["kind"] == "intact", "accuracy"].iloc[0])
        out = []
        for family, part in t[t["kind"] != "intact"].groupby("family", sort=False):
            top = float(part.loc[part["kind"] == "top", "accuracy"].iloc[0])
            rand = part.loc[part["kind"] == "random", "accuracy"].to_numpy()
            out.append({"family": family, "k": int(part["k"].iloc[0]), "intact": intact, "top_k": top,
                        "random_mean": float(rand.mean()), "random_sd": float(rand.std(ddof=1)) if len(rand) > 1 else 0.0,
                        "random_min": float(rand.min()), "random_max": float(rand.max()), "n_random": len(rand),
                        "drop_top_k": intact - top, "drop_random": intact - float(rand.mean())})
        return pd.DataFrame(out)


def masking_experiment(subject, tests: Sequence[NeedleTest], scores: dict[str, np.ndarray], k: int,
                       thresholds: dict[str, float] | float = 0.1, n_random: int = 5, seed: int = 0,
                       max_new_tokens: int = 50, batch_size: int = 8, mask_prefill: bool = False) -> MaskingResult:
    """NIAH accuracy intact, with each family's top-k heads query-zeroed, and with k random sub-threshold heads (n_random seeded draws)."""
    if not scores:
        raise InputError("give at least one family of head scores, e.g. {'retrieval': scores}")
    if n_random < 1:
        raise InputError(f"n_random must be >= 1, got {n_random}")
    conditions: dict[str, list[Head]] = {"intact": []}
    meta = {"intact": ("intact", "intact", 0, None)}
    for i, (family, s) in enumerate(scores.items()):
        s = np.asarray(s, dtype=np.float64)
        if s.shape != (subject.n_layers, subject.n_heads):
            raise InputError(f"{family} scores have shape {s.shape}, expected ({subject.n_layers}, {subject.n_heads})")
        threshold = thresholds[family] if isinstance(thresholds, dict) else thresholds
        top = top_heads(s, k)
        conditions[f"top{k} {family}"] = top
        meta[f"top{k} {family}"] = (family, "top", k, None)
        for d, heads in enumerate(random_heads(s, k, threshold, top, n_random, seed + 1000 * i)):
            name = f"random{k} non-{family} #{d}"
            conditions[name] = heads
            meta[name] = (family, "random", k, d)
    runs = run_conditions(subject, tests, conditions, max_new_tokens=max_new_tokens, batch_size=batch_size,
                          mask_prefill=mask_prefill, desc="masking")
    rows = []
    for name, run in runs.items():
        family, kind, kk, draw = meta[name]
        rows.append({"condition": name, "family": family, "kind": kind, "k": kk, "draw": draw,
                     "accuracy": run.accuracy, "mean_recall": float(run.table["recall"].mean()),
                     "n_tests": len(run.table), "heads": " ".join(f"L{l}H{h}" for l, h in conditions[name])})
    return MaskingResult(pd.DataFrame(rows), runs)

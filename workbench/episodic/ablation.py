"""The causal link: does ablating the top induction / CMR-like heads remove the contiguity effect? (Mistry et al. 2025; Ji-An et al. 2024)

Also Ji-An et al.'s own ablation (METHODS.md s3): the in-context-learning score, loss at token 500 minus loss
at token 50 of natural text (Olsson et al. 2022), intact vs top heads vs random sets (:func:`icl_score_ablation`).

Conditions on one list stimulus: the intact model, the top-k heads zero-ablated (their output z before o_proj
set to 0, which for one query head equals Ji-An et al.'s value zeroing), and ``n_random`` sets of k random
heads drawn (seeded) from the heads outside the top set. Measured per condition:

- outputs: the in-context serial-recall curve, next-token probability of the study item at each lag from the
  current test item; ``recall_plus1`` (lag +1, with a bootstrap CI over sequences) and ``recall_contiguity``
  (mean at 1 <= |lag| <= 2 minus mean at |lag| > 2);
- attention: each head's Kahana lag-CRP of attention; ``attn_contiguity`` and ``attn_plus1`` are their means
  over the *measured* heads, those ablated in no condition (an ablated head's own pattern is not changed by
  zeroing its output, so it would mask the downstream effect); ``attn_contiguity_top`` is the mean contiguity of
  the measured heads in the top decile of *intact* contiguity (the heads that have a contiguity effect to lose;
  the set is fixed by the intact condition, the same for every condition).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from ..errors import InputError
from ..interventions import InterventionHook, ZeroHead
from ..progress import progress
from .capture import LAGS, candidate_logprobs, capture_lists
from .lag_crp import contiguity

NEAR = 2
TOP_CONTIGUOUS = 0.9  # quantile of intact contiguity over the measured heads


def top_heads(matrix, k: int, largest: bool = True) -> list[tuple[int, int]]:
    """The k heads with the largest (or smallest) finite values of an (L, H) matrix, best first."""
    m = np.asarray(matrix, dtype=np.float64)
    if m.ndim != 2:
        raise InputError(f"give an (n_layers, n_heads) matrix, got shape {m.shape}")
    flat = np.where(np.isfinite(m), m if largest else -m, -np.inf).ravel()
    if k < 1 or k > np.isfinite(m).sum():
        raise InputError(f"k must be in 1..{int(np.isfinite(m).sum())} (heads with a finite value), got {k}")
    order = np.argsort(-flat, kind="stable")[:k]
    return [tuple(int(x) for x in divmod(int(i), m.shape[1])) for i in order]


def random_heads(n_layers: int, n_heads: int, k: int, seed: int, exclude=()) -> list[tuple[int, int]]:
    """k distinct heads drawn uniformly (seeded) from the model's heads minus ``exclude``, sorted."""
    excluded = {tuple(h) for h in exclude}
    pool = [(l, h) for l in range(n_layers) for h in range(n_heads) if (l, h) not in excluded]
    if k > len(pool):
        raise InputError(f"cannot draw {k} random heads from the {len(pool)} outside the excluded set")
    pick = np.random.default_rng(seed).choice(len(pool), size=k, replace=False)
    return sorted(pool[i] for i in pick)


@dataclass
class AblationResult:
    """One row per condition, the output recall curves and the mean attention CRP over the measured heads."""

    table: pd.DataFrame
    lags: np.ndarray
    recall: dict[str, np.ndarray]  # condition -> mean next-token probability by lag
    recall_ci: dict[str, tuple[np.ndarray, np.ndarray]]
    crp_lags: np.ndarray
    crp: dict[str, np.ndarray]  # condition -> CRP by lag averaged over the measured heads
    measured: list[tuple[int, int]]
    head_contiguity: dict[str, np.ndarray]  # condition -> (L, H) attention contiguity of every head
    contiguous: list[tuple[int, int]]  # the measured heads in the top decile of intact contiguity


def ablation_conditions(subject, top: list, *, n_random: int = 3, seed: int = 0) -> dict[str, list]:
    """{'intact': [], 'top': top, 'random-0': ..., ...}: the random sets avoid the top heads and are seeded by (seed, i)."""
    if not top:
        raise InputError("give at least one head to ablate")
    conditions = {"intact": [], "top": [tuple(h) for h in top]}
    for i in range(n_random):
        conditions[f"random-{i}"] = random_heads(subject.n_layers, subject.n_heads, len(top), seed * 1000 + i, top)
    return conditions


def contiguity_ablation(subject, lists, top: list, *, n_random: int = 3, seed: int = 0, lags=LAGS, max_lag: int = 8,
                        n_boot: int = 1000, batch_size: int | None = None, on_condition=None) -> AblationResult:
    """Serial recall in outputs and attention contiguity, intact vs top-k heads ablated vs random k-head sets; ``on_condition(table)`` after each."""
    conditions = ablation_conditions(subject, top, n_random=n_random, seed=seed)
    ablated = {h for heads in conditions.values() for h in heads}
    measured = [(l, h) for l in range(subject.n_layers) for h in range(subject.n_heads) if (l, h) not in ablated]
    if not measured:
        raise InputError("every head is ablated in some condition: use fewer or smaller random sets")
    idx = tuple(np.array(measured).T)
    rows, recall, recall_ci, crps, per_head = [], {}, {}, {}, {}
    crp_lags = contiguous = None
    for name, heads in progress(list(conditions.items()), desc="ablation", unit="condition"):
        hooks = [InterventionHook(subject, [ZeroHead(heads)])] if heads else []
        cap = capture_lists(subject, lists, lags=lags, batch_size=batch_size, extra_hooks=hooks)
        curve = cap.recall_curve(n_boot=n_boot, seed=seed)
        crp_lags, crp = cap.crp(max_lag=max_lag)
        per_head[name] = contiguity(crp, crp_lags, near=NEAR)
        if contiguous is None:  # the intact condition comes first
            c = per_head[name][idx]
            contiguous = [h for h, v in zip(measured, c) if v >= np.nanquantile(c, TOP_CONTIGUOUS)]
        top_idx = tuple(np.array(contiguous).T)
        plus = int(np.flatnonzero(curve.lags == 1)[0])
        crps[name] = crp[idx].mean(0)
        recall[name], recall_ci[name] = curve.mean, (curve.ci_low, curve.ci_high)
        rows.append({"condition": name, "n_ablated": len(heads),
                     "heads": " ".join(f"L{l}H{h}" for l, h in heads),
                     "recall_plus1": curve.mean[plus], "recall_plus1_low": curve.ci_low[plus],
                     "recall_plus1_high": curve.ci_high[plus],
                     "recall_contiguity": float(contiguity(curve.mean, curve.lags, near=NEAR)),
                     "attn_contiguity": float(per_head[name][idx].mean()),
                     "attn_contiguity_top": float(per_head[name][top_idx].mean()),
                     "attn_plus1": float(crp[idx][:, int(np.flatnonzero(crp_lags == 1)[0])].mean()),
                     "n_measured": len(measured)})
        if on_condition is not None:
            on_condition(pd.DataFrame(rows))
    return AblationResult(pd.DataFrame(rows), np.asarray(lags), recall, recall_ci, crp_lags, crps, measured, per_head,
                          contiguous)


def text_windows(subject, text: str, n: int, length: int, seed: int = 0) -> torch.Tensor:
    """(n, length) token windows of ``text`` at seeded random offsets, BOS first when the model has one."""
    ids = torch.tensor(subject.tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)
    bos = subject.bos_token_id is not None
    span = length - int(bos)
    if len(ids) < span + n:
        raise InputError(f"the text has {len(ids)} tokens; {n} windows of {length} need at least {span + n}")
    starts = np.random.default_rng(seed).choice(len(ids) - span, size=n, replace=False)
    rows = torch.stack([ids[s:s + span] for s in starts])
    if bos:
        rows = torch.cat([torch.full((n, 1), subject.bos_token_id, dtype=torch.long), rows], dim=1)
    subject.check_length(rows.shape[1])
    return rows


def icl_score_ablation(subject, windows: torch.Tensor, top: list, *, n_random: int = 3, seed: int = 0,
                       early: int = 50, late: int = 500, batch_size: int | None = None) -> pd.DataFrame:
    """In-context-learning score = mean loss at token ``late`` - mean loss at token ``early`` (nats; Olsson et al. 2022), intact vs top-k heads vs random sets zero-ablated (Ji-An et al. 2024).

    ``change`` is the paired (same windows) difference of a condition's per-window score from the intact one,
    with its SEM over windows: far less noisy than the scores themselves.
    """
    windows = torch.as_tensor(windows, dtype=torch.long)
    if windows.ndim != 2 or not 0 < early < late < windows.shape[1]:
        raise InputError(f"windows must be (n, tokens) with 0 < early < late < tokens; got {tuple(windows.shape)}, "
                         f"early {early}, late {late}")
    at = torch.tensor([early - 1, late - 1]).expand(windows.shape[0], 2)  # predicting tokens early and late
    step = batch_size or windows.shape[0]
    rows, intact = [], None
    for name, heads in progress(list(ablation_conditions(subject, top, n_random=n_random, seed=seed).items()),
                                desc="ICL score", unit="condition"):
        hooks = [InterventionHook(subject, [ZeroHead(heads)])] if heads else []
        loss = torch.cat([-candidate_logprobs(subject, windows[lo:lo + step], at[lo:lo + step],
                                              windows[lo:lo + step, [early, late]][..., None], hooks)[..., 0]
                          for lo in range(0, windows.shape[0], step)]).double()
        diff = loss[:, 1] - loss[:, 0]
        intact = diff if intact is None else intact  # the intact condition comes first
        sem = (lambda x: float(x.std() / np.sqrt(len(x))) if len(x) > 1 else float("nan"))  # noqa: E731
        rows.append({"condition": name, "n_ablated": len(heads), "loss_early": float(loss[:, 0].mean()),
                     "loss_late": float(loss[:, 1].mean()), "icl_score": float(diff.mean()), "icl_score_sem": sem(diff),
                     "change": float((diff - intact).mean()), "change_sem": sem(diff - intact)})
    return pd.DataFrame(rows)

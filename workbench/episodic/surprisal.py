"""Repeat surprisal (Armeni et al. 2022, METHODS.md §10): how much cheaper a list of nouns gets when it comes back.

Per prompt: surprisal (bits) of each noun of list 1 and list 2; repeat surprisal = 100 x mean surprisal of
list 2 / mean surprisal of list 1. Per condition: the median over prompts with a percentile-bootstrap CI
(resampling prompts). Expected (their GPT-2 result): repeated << permuted < novel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from ..errors import InputError
from ..progress import progress
from ..stimuli.lists import CONDITIONS, RecallLists, verbatim_lists
from .capture import candidate_logprobs

LIST_LENGTHS = (3, 5, 7, 10)


def noun_surprisal(subject, lists: RecallLists, *, batch_size: int | None = None,
                   extra_hooks=()) -> tuple[np.ndarray, np.ndarray]:
    """Surprisal in bits, -log2 p(noun | prefix), of every list-1 and list-2 noun: two (B, list_len) arrays."""
    pos = torch.cat([lists.study_pos, lists.test_pos], dim=1)
    if int(pos.min()) < 1:
        raise InputError("a noun at position 0 has no prefix to be predicted from")
    step = batch_size or lists.batch
    out = []
    for lo in range(0, lists.batch, step):
        ids, p = lists.input_ids[lo:lo + step], pos[lo:lo + step]
        out.append(-candidate_logprobs(subject, ids, p - 1, ids.gather(1, p)[..., None], extra_hooks)[..., 0])
    bits = (torch.cat(out) / math.log(2)).numpy()
    return bits[:, :lists.n_items], bits[:, lists.n_items:]


def repeat_surprisal(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """100 x mean surprisal of list 2 / mean surprisal of list 1, per prompt (Armeni et al. 2022)."""
    first, second = np.asarray(first, dtype=np.float64), np.asarray(second, dtype=np.float64)
    if first.ndim != 2 or second.shape[0] != first.shape[0]:
        raise InputError(f"give (prompts, nouns) surprisal arrays for both lists, got {first.shape} and {second.shape}")
    return 100.0 * second.mean(-1) / first.mean(-1)


def median_ci(values, *, n_boot: int = 2000, ci: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """Median with its percentile-bootstrap confidence interval, resampling the values (Efron 1979; Armeni et al. 2022)."""
    from scipy.stats import bootstrap

    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    if len(x) < 2:
        raise InputError(f"a bootstrap CI needs at least 2 values, got {len(x)}")
    res = bootstrap((x,), np.median, n_resamples=n_boot, confidence_level=ci, method="percentile",
                    random_state=np.random.default_rng(seed))
    return float(np.median(x)), float(res.confidence_interval.low), float(res.confidence_interval.high)


@dataclass
class VerbatimResult:
    """Per-prompt table, per-cell summary (median and CI) and mean surprisal per noun position (for timecourse plots)."""

    prompts: pd.DataFrame  # condition, list_len, intervening, intervening_tokens, scramble, prompt, repeat_surprisal, ...
    summary: pd.DataFrame  # one row per (condition, list_len, intervening, scramble): median, ci_low, ci_high, n
    timecourse: pd.DataFrame  # condition, list_len, intervening, scramble, list (1/2), position, surprisal, sem


def summarise(prompts: pd.DataFrame, *, n_boot: int = 2000, ci: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """Median repeat surprisal and its bootstrap CI per (condition, list_len, intervening, scramble) cell."""
    rows = []
    keys = ["condition", "list_len", "intervening", "intervening_tokens", "scramble"]
    for cell, group in prompts.groupby(keys, sort=False):
        med, low, high = median_ci(group["repeat_surprisal"], n_boot=n_boot, ci=ci, seed=seed)
        rows.append({**dict(zip(keys, cell)), "median": med, "ci_low": low, "ci_high": high, "n": len(group)})
    return pd.DataFrame(rows)


def verbatim_experiment(subject, *, list_lens=LIST_LENGTHS, conditions=CONDITIONS, intervening=("short",),
                        scramble=(False,), n_lists: int = 20, seed: int = 0, batch_size: int | None = None,
                        extra_hooks=(), n_boot: int = 2000, on_cell=None) -> VerbatimResult:
    """Armeni et al.'s design: every (list length, intervening text, scramble, condition) cell with ``n_lists`` prompts; ``on_cell(prompts)`` after each cell."""
    cells = [(n, text, scr, cond) for n in list_lens for text in intervening for scr in scramble for cond in conditions]
    if not cells:
        raise InputError("no cells: give at least one list length, intervening text, scramble flag and condition")
    prompts, course = [], []
    for n, text, scr, cond in progress(cells, desc="repeat surprisal", unit="cell"):
        lists = verbatim_lists(subject, n, cond, text, n_lists, seed, scramble=scr)
        s1, s2 = noun_surprisal(subject, lists, batch_size=batch_size, extra_hooks=extra_hooks)
        info = lists.info
        cell = {"condition": cond, "list_len": n, "intervening": info["intervening"],
                "intervening_tokens": info["intervening_tokens"], "scramble": scr}
        prompts += [{**cell, "prompt": i, "repeat_surprisal": r, "list1_bits": a, "list2_bits": b}
                    for i, (r, a, b) in enumerate(zip(repeat_surprisal(s1, s2), s1.mean(-1), s2.mean(-1)))]
        for which, s in ((1, s1), (2, s2)):
            sem = s.std(0, ddof=1) / np.sqrt(len(s)) if len(s) > 1 else np.full(s.shape[1], np.nan)
            course += [{**cell, "list": which, "position": k + 1, "surprisal": m, "sem": e}
                       for k, (m, e) in enumerate(zip(s.mean(0), sem))]
        if on_cell is not None:
            on_cell(pd.DataFrame(prompts))
    table = pd.DataFrame(prompts)
    return VerbatimResult(table, summarise(table, n_boot=n_boot, seed=seed), pd.DataFrame(course))

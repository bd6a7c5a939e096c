"""Retrieval score (Wu et al. 2024) and NIAH answer checking: pure functions, no model calls."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import torch

from ..errors import InputError

RETRIEVAL_THRESHOLD = 0.1  # Wu et al. 2024: heads scoring above it are retrieval heads
CORRECT_RECALL = 0.5  # Wu et al.'s code keeps tests with ROUGE-1 recall > 50%


def copy_paste_events(top_keys: torch.Tensor, generated: torch.Tensor, prompt_ids: torch.Tensor,
                      answer_span: tuple[int, int]) -> torch.Tensor:
    """Bool (T, L, H): at step t head (l, h)'s top-1 key j lies in the answer span and prompt[j] is the token generated at t (Wu et al. 2024)."""
    top_keys = torch.as_tensor(top_keys, dtype=torch.long)
    generated = torch.as_tensor(generated, dtype=torch.long)
    prompt_ids = torch.as_tensor(prompt_ids, dtype=torch.long)
    start, end = int(answer_span[0]), int(answer_span[1])
    if top_keys.ndim != 3 or generated.shape != top_keys.shape[:1]:
        raise InputError(f"top_keys must be (steps, layers, heads) with one generated token per step, got "
                         f"{tuple(top_keys.shape)} and {tuple(generated.shape)}")
    if not 0 <= start < end <= len(prompt_ids):
        raise InputError(f"answer span [{start}, {end}) must be a non-empty range inside the prompt of {len(prompt_ids)} tokens")
    in_span = (top_keys >= start) & (top_keys < end)
    source = prompt_ids[top_keys.clamp(0, len(prompt_ids) - 1)]
    return in_span & (source == generated[:, None, None])


def retrieval_score(top_keys: torch.Tensor, generated: torch.Tensor, prompt_ids: torch.Tensor,
                    answer_span: tuple[int, int]) -> np.ndarray:
    """(L, H) copy-paste events / |answer span| for one test (Wu et al. 2024); [0, steps/|span|], 1 = every answer token copied by that head."""
    events = copy_paste_events(top_keys, generated, prompt_ids, answer_span)
    return events.sum(0).double().numpy() / (int(answer_span[1]) - int(answer_span[0]))


def rouge1_recall(reference: str, candidate: str) -> float:
    """ROUGE-1 recall: share of the reference's words (lowercased alphanumeric runs, counts clipped) found in the candidate; no stemming."""
    def words(text: str) -> list[str]:
        return re.sub(r"[^a-z0-9]+", " ", text.lower()).split()

    ref, cand = Counter(words(reference)), Counter(words(candidate))
    total = sum(ref.values())
    if total == 0:
        raise InputError(f"the reference answer {reference!r} has no words to recall")
    return sum(min(n, cand[w]) for w, n in ref.items()) / total


def mean_over_correct(scores: np.ndarray, correct) -> np.ndarray:
    """(L, H) mean of per-test scores (n, L, H) over the tests answered correctly (Wu et al. 2024); InputError if none is."""
    scores, correct = np.asarray(scores, dtype=np.float64), np.asarray(correct, dtype=bool)
    if scores.ndim != 3 or correct.shape != scores.shape[:1]:
        raise InputError(f"scores must be (tests, layers, heads) with one correct flag per test, got {scores.shape} "
                         f"and {correct.shape}")
    if not correct.any():
        raise InputError("no test was answered correctly, so no retrieval score can be computed: use shorter "
                         "contexts or another haystack")
    return scores[correct].mean(0)

"""Running NIAH tests: greedy answers, correctness, per-test retrieval scores, under head masks.

Tests of equal length are batched (the builder makes every prompt exactly its length, so there is no
padding). Masking is Wu et al.'s query zeroing (``ZeroQuery``) on the decoded tokens, as in their
``needle_in_haystack_with_mask.py`` (the prefill is not masked); ``mask_prefill=True`` masks the prompt too.
Without prefill masking, all conditions share one prefill per batch.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from ..errors import InputError
from ..inputs import as_heads
from ..progress import progress
from ..stimuli.niah import NeedleTest
from .decode import decode, prefill
from .scoring import CORRECT_RECALL, mean_over_correct, retrieval_score, rouge1_recall

Head = tuple[int, int]


@dataclass
class NiahRun:
    """Results of NIAH tests under one condition: a row per test, and per-test head scores if recorded."""

    table: pd.DataFrame
    head_scores: np.ndarray | None = None  # (n_tests, L, H) Wu et al. retrieval score per test
    settings: dict = field(default_factory=dict)

    @property
    def accuracy(self) -> float:
        """Share of tests answered correctly (ROUGE-1 recall of the answer > 0.5)."""
        return float(self.table["correct"].mean())

    def retrieval_scores(self) -> np.ndarray:
        """(L, H) Wu et al.'s retrieval score: the per-test score averaged over the correctly answered tests."""
        if self.head_scores is None:
            raise InputError("this run did not record top-1 keys: run it with record=True")
        return mean_over_correct(self.head_scores, self.table["correct"].to_numpy())

    def accuracy_grid(self) -> pd.DataFrame:
        """Accuracy per (depth, length): depths as rows, lengths as columns."""
        return self.table.pivot_table(index="depth", columns="length", values="correct", aggfunc="mean")


def _check_tests(subject, tests) -> list[NeedleTest]:
    tests = list(tests)
    if not tests:
        raise InputError("no NIAH tests given: build them with workbench.stimuli.niah.niah_grid(...)")
    for t in tests:
        if not isinstance(t, NeedleTest):
            raise InputError(f"expected NeedleTest objects (from niah_grid), got {type(t).__name__}")
        subject.check_length(len(t.input_ids))
    return tests


def _check_heads(subject, heads) -> list[Head]:
    out = as_heads(heads)
    for layer, head in out:
        subject.check_head(layer, head)
    return out


def run_conditions(subject, tests: Sequence[NeedleTest], conditions: dict[str, Sequence[Head]], *,
                   record: bool | Sequence[str] = False, max_new_tokens: int = 50, batch_size: int = 8,
                   mask_prefill: bool = False, stop_at_newline: bool = True,
                   on_result: Callable[[str, dict], None] | None = None, desc: str = "niah") -> dict[str, NiahRun]:
    """Answer every test greedily under each condition (a list of heads to mask by query zeroing); {condition: NiahRun}."""
    tests = _check_tests(subject, tests)
    if not conditions:
        raise InputError("give at least one condition, e.g. {'intact': []}")
    masks = {name: _check_heads(subject, heads) for name, heads in conditions.items()}
    recorded = set(masks) if record is True else set(record or ())
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    longest = max(len(t.input_ids) for t in tests)
    if longest + max_new_tokens > subject.context_limit:  # refuse before the first (long) prefill, not after it
        raise InputError(f"{longest} prompt tokens + {max_new_tokens} new ones exceed {subject.name}'s context of "
                         f"{subject.context_limit}: use lengths up to {subject.context_limit - max_new_tokens}")
    by_length = defaultdict(list)
    for i, t in enumerate(tests):
        by_length[len(t.input_ids)].append(i)
    chunks = [idx[s:s + batch_size] for _, idx in sorted(by_length.items()) for s in range(0, len(idx), batch_size)]
    rows = {name: [None] * len(tests) for name in masks}
    scores = {name: [None] * len(tests) for name in recorded}
    bar = progress(total=len(tests) * len(masks), desc=desc, unit="answer")
    try:
        for chunk in chunks:
            ids = np.stack([tests[i].input_ids.numpy() for i in chunk])
            shared = None if mask_prefill else prefill(subject, ids)
            for name, heads in masks.items():
                state = prefill(subject, ids, heads) if mask_prefill else shared
                out = decode(subject, state, max_new_tokens, stop_at_newline, mask_heads=heads, record=name in recorded)
                for row, i in enumerate(chunk):
                    t = tests[i]
                    recall = rouge1_recall(t.needle.answer, out.texts[row])
                    record_row = {**t.record(), "condition": name, "masked_heads": len(heads),
                                  "response": out.texts[row], "recall": recall, "correct": recall > CORRECT_RECALL,
                                  "new_tokens": len(out.tokens[row])}
                    rows[name][i] = record_row
                    if name in recorded:
                        scores[name][i] = retrieval_score(out.top_keys[row], np.asarray(out.tokens[row]),
                                                          t.input_ids, t.answer_span)
                    if on_result is not None:
                        on_result(name, record_row)
                    bar.update(1)
    finally:
        bar.close()
    settings = {"max_new_tokens": max_new_tokens, "mask_prefill": mask_prefill, "stop_at_newline": stop_at_newline,
                "masking": "ZeroQuery (query zeroing, Wu et al. 2024)"}
    return {name: NiahRun(pd.DataFrame(rows[name]),
                          np.stack(scores[name]).astype(np.float32) if name in recorded else None,
                          {**settings, "condition": name, "masked": [list(h) for h in masks[name]]})
            for name in masks}


def run_niah(subject, tests: Sequence[NeedleTest], *, mask_heads: Sequence[Head] = (), record: bool = True,
             max_new_tokens: int = 50, batch_size: int = 8, mask_prefill: bool = False,
             stop_at_newline: bool = True, on_result: Callable[[str, dict], None] | None = None) -> NiahRun:
    """NIAH accuracy (and per-test retrieval scores if ``record``) with ``mask_heads`` query-zeroed (none by default)."""
    name = "masked" if mask_heads else "intact"
    return run_conditions(subject, tests, {name: mask_heads}, record=record, max_new_tokens=max_new_tokens,
                          batch_size=batch_size, mask_prefill=mask_prefill, stop_at_newline=stop_at_newline,
                          on_result=on_result)[name]

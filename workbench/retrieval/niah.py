"""Running NIAH tests: greedy answers, correctness, per-test retrieval scores, under head masks.

Tests of equal length are batched (the builder makes every prompt exactly its length, so there is no
padding). Masking is Wu et al.'s query zeroing (``ZeroQuery``) on the decoded tokens, as in their
``needle_in_haystack_with_mask.py`` (the prefill is not masked); ``mask_prefill=True`` masks the prompt too.
Without prefill masking, all conditions share one prefill per batch.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import numpy as np
import pandas as pd

from ..errors import InputError
from ..inputs import as_heads
from ..interventions import ZeroQuery, apply
from ..models.decoding import prefill
from ..patterns.capture import memory_plan, too_big
from ..patterns.memory import Budget, ModelDims, largest_step, steady_allocator
from ..progress import progress
from ..scores.intervals import ItemScores
from ..stimuli.niah import NeedleTest
from .decode import decode, predict_decoding
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

    def retrieval_items(self, kind: str | None = None) -> ItemScores:
        """Per-test retrieval scores (n_tests, L, H) as items, counting the correctly answered tests (of needle family ``kind`` if given); their mean is retrieval_scores()."""
        if self.head_scores is None:
            raise InputError("this run did not record top-1 keys: run it with record=True")
        keep = self.table["correct"].to_numpy(dtype=bool)
        if kind is not None:
            keep = keep & (self.table["kind"] == kind).to_numpy()
        return ItemScores(self.head_scores, keep, "NIAH tests answered correctly")

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


def check_run(subject, tests, conditions: dict[str, Sequence[Head]], *, max_new_tokens: int,
              batch_size: int) -> tuple[list[NeedleTest], dict[str, list[Head]]]:
    """(tests, {condition: heads}) checked before any prefill: tests, heads, batch size, room for the answer."""
    tests = _check_tests(subject, tests)
    if not conditions:
        raise InputError("give at least one condition, e.g. {'intact': []}")
    masks = {name: _check_heads(subject, heads) for name, heads in conditions.items()}
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    longest = max(len(t.input_ids) for t in tests)
    if longest + max_new_tokens > subject.context_limit:  # refuse before the first (long) prefill, not after it
        raise InputError(f"{longest} prompt tokens + {max_new_tokens} new ones exceed {subject.name}'s context of "
                         f"{subject.context_limit}: use lengths up to {subject.context_limit - max_new_tokens}")
    return tests, masks


def plan_memory(subject, tests: Sequence[NeedleTest], batch_size: int, max_new_tokens: int) -> dict[str, dict]:
    """Per prompt length (as a string): the largest batch step up to ``batch_size`` whose predicted prefill + decoding
    peak fits half the free memory, as a ``memory_plan``; CaptureMemoryError if one prompt alone does not fit."""
    steady_allocator()
    dims, budget = ModelDims.of(subject), Budget.now(subject.device)
    counts = defaultdict(int)
    for t in tests:
        counts[len(t.input_ids)] += 1
    plans = {}
    for n, count in sorted(counts.items()):
        def predict(step, n=n):
            return predict_decoding(dims, step, n, max_new_tokens, device_type=subject.device.type)

        step = largest_step(predict, min(batch_size, count), budget)
        if step == 0:
            raise too_big(f"answering {n}-token NIAH prompts", predict(1), budget, "Use shorter prompts.")
        plans[str(n)] = memory_plan("decode", step, count, predict(step), budget, "fits")
    return plans


def plan_batches(tests: Sequence[NeedleTest], batch_size: int, memory: dict[str, dict] | None = None) -> list[list[int]]:
    """Indices of ``tests`` in batches of at most ``batch_size`` prompts of equal length (no padding), shortest first;
    ``memory`` (from ``plan_memory``) lowers the step of each length to what fits."""
    by_length = defaultdict(list)
    for i, t in enumerate(tests):
        by_length[len(t.input_ids)].append(i)
    steps = {n: min(batch_size, (memory or {}).get(str(n), {}).get("batch_size", batch_size)) for n in by_length}
    return [idx[s:s + steps[n]] for n, idx in sorted(by_length.items()) for s in range(0, len(idx), steps[n])]


@dataclass
class Answer:
    """One test's greedy answer under one condition; ``scores`` (L, H): Wu et al.'s per-test retrieval score, if recorded."""

    test: int  # index into the tests given to answer_tests
    condition: str
    row: dict
    scores: np.ndarray | None


def answer_tests(subject, tests: Sequence[NeedleTest], masks: dict[str, list[Head]], recorded=(), *,
                 max_new_tokens: int = 50, mask_prefill: bool = False,
                 stop_at_newline: bool = True) -> Iterator[Answer]:
    """Answer a batch of equal-length tests greedily under each condition (prefill shared unless ``mask_prefill``)."""
    ids = np.stack([t.input_ids.numpy() for t in tests])
    shared = None if mask_prefill else prefill(subject, ids)
    for name, heads in masks.items():
        if mask_prefill:
            with apply(subject, *([ZeroQuery(list(heads))] if heads else [])):
                state = prefill(subject, ids)
        else:
            state = shared
        out = decode(subject, state, max_new_tokens, stop_at_newline, mask_heads=heads, record=name in recorded)
        for i, t in enumerate(tests):
            recall = rouge1_recall(t.needle.answer, out.texts[i])
            row = {**t.record(), "condition": name, "masked_heads": len(heads), "response": out.texts[i],
                   "recall": recall, "correct": recall > CORRECT_RECALL, "new_tokens": len(out.tokens[i])}
            scores = (retrieval_score(out.top_keys[i], np.asarray(out.tokens[i]), t.input_ids, t.answer_span)
                      if name in recorded else None)
            yield Answer(i, name, row, scores)


def run_settings(*, max_new_tokens: int, mask_prefill: bool, stop_at_newline: bool) -> dict:
    """The settings of a NIAH run beside its grid's (what ``NiahRun.settings`` and a NIAH folder record)."""
    return {"max_new_tokens": max_new_tokens, "mask_prefill": mask_prefill, "stop_at_newline": stop_at_newline,
            "masking": "ZeroQuery (query zeroing, Wu et al. 2024)"}


def run_conditions(subject, tests: Sequence[NeedleTest], conditions: dict[str, Sequence[Head]], *,
                   record: bool | Sequence[str] = False, max_new_tokens: int = 50, batch_size: int = 8,
                   mask_prefill: bool = False, stop_at_newline: bool = True,
                   on_result: Callable[[str, dict], None] | None = None, desc: str = "niah") -> dict[str, NiahRun]:
    """Answer every test greedily under each condition (a list of heads to mask by query zeroing); {condition: NiahRun}."""
    tests, masks = check_run(subject, tests, conditions, max_new_tokens=max_new_tokens, batch_size=batch_size)
    recorded = set(masks) if record is True else set(record or ())
    memory = plan_memory(subject, tests, batch_size, max_new_tokens)
    rows = {name: [None] * len(tests) for name in masks}
    scores = {name: [None] * len(tests) for name in recorded}
    bar = progress(total=len(tests) * len(masks), desc=desc, unit="answer")
    try:
        for chunk in plan_batches(tests, batch_size, memory):
            for a in answer_tests(subject, [tests[i] for i in chunk], masks, recorded, max_new_tokens=max_new_tokens,
                                  mask_prefill=mask_prefill, stop_at_newline=stop_at_newline):
                rows[a.condition][chunk[a.test]] = a.row
                if a.scores is not None:
                    scores[a.condition][chunk[a.test]] = a.scores
                if on_result is not None:
                    on_result(a.condition, a.row)
                bar.update(1)
    finally:
        bar.close()
    settings = {**run_settings(max_new_tokens=max_new_tokens, mask_prefill=mask_prefill, stop_at_newline=stop_at_newline),
                "memory": memory}  # per prompt length
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

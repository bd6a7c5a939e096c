"""A NIAH grid run into a result folder (``workbench.results``): locked, tied to its settings, resumable.

Layout::

    DIR/niah.json       the manifest: {"format": 2, "kind": "niah", "settings": {model, grid (niah_grid's
                        settings), prompts_sha1, conditions: {name: [[layer, head], ...]}, record,
                        max_new_tokens, mask_prefill, stop_at_newline, masking}, "settings_hash",
                        "model_facts", "status": "running" | "complete", "started", "finished",
                        "accuracy": {condition: share correct} (when complete)}
    DIR/parts/part-000001.parquet ...
                        a batch of answered tests each (equal-length prompts, all conditions): one row per
                        (test, condition): the test's record (length, depth, needle, spans...), condition,
                        masked_heads, response, recall, correct, new_tokens, test ("L256-D50-N0"),
                        test_index (position in the grid), head_scores (Wu et al.'s per-test retrieval
                        score per head, L*H floats, for recorded conditions), settings_hash
    DIR/answers.jsonl   every answer as a JSON line, written when the grid is complete (from the parts)
    DIR/.lock           held by the process writing the folder

A second run into a used folder is refused unless it resumes with the same settings; a resume skips
the tests whose answers are on disk. Answers are only ever added (a new part per batch), never replaced.

Computing is separate from writing, as for sweeps: ``BatchWorker(subject, job)(batch)`` answers one batch of
tests (indices into ``job.tests``) under every condition and returns its rows; the driver hands batches to an
executor (``workbench.executors``: this process or Ray actors) and writes each batch's rows as one part.
"""

from __future__ import annotations

import functools
import json
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from ..errors import InputError
from ..executors import Executor, get_executor
from ..io import atomic_write_text
from ..progress import progress
from ..results import ResultFolder, data_digest, now
from ..stimuli.niah import NeedleTest, NiahGrid
from .niah import Head, NiahRun, answer_tests, check_run, plan_batches, run_settings

MANIFEST = "niah.json"
ANSWERS = "answers.jsonl"
HELPER_COLUMNS = ["test_index", "head_scores"]  # in the parts, not in NiahRun.table
LEGACY = "this NIAH folder was written by an older workbench (answers.jsonl replaced on every run, no settings hash)"


def niah_folder(out) -> ResultFolder:
    """The result folder of a NIAH grid (manifest niah.json, parts keyed by ``test``)."""
    return ResultFolder(out, MANIFEST, kind="niah", key="test", legacy=LEGACY, legacy_files=(ANSWERS,))


def grid_key(test: NeedleTest) -> str:
    """A test's name in its grid: 'L<length>-D<depth>-N<needle index>'."""
    return f"L{test.length}-D{test.depth:g}-N{test.needle_index}"


@dataclass
class NiahJob:
    """What every batch of one NIAH grid shares: the tests, their keys, the conditions' masks and decoding settings."""

    tests: list[NeedleTest]
    keys: list[str]
    masks: dict[str, list[Head]]
    recorded: set[str]
    max_new_tokens: int
    mask_prefill: bool
    stop_at_newline: bool


class BatchWorker:
    """Answers batches of one grid's tests on one subject: ``worker(batch)`` -> the batch's rows (a part's rows)."""

    def __init__(self, subject, job: NiahJob):
        self.subject, self.job = subject, job

    def __call__(self, batch: Sequence[int], on_answer: Callable[[int], object] | None = None) -> pd.DataFrame:
        """Rows (test record, condition, answer, recall, test key and index, head scores) of the tests ``batch`` (indices into ``job.tests``)."""
        job, rows = self.job, []
        for a in answer_tests(self.subject, [job.tests[i] for i in batch], job.masks, job.recorded,
                              max_new_tokens=job.max_new_tokens, mask_prefill=job.mask_prefill,
                              stop_at_newline=job.stop_at_newline):
            i = batch[a.test]
            rows.append({**a.row, "test": job.keys[i], "test_index": i,
                         "head_scores": None if a.scores is None else a.scores.astype(np.float32).ravel()})
            if on_answer is not None:
                on_answer(1)
        return pd.DataFrame(rows)


def run_niah_grid(subject, grid: NiahGrid, out, conditions: dict[str, Sequence[Head]], *,
                  record: bool | Sequence[str] = True, resume: bool = False, max_new_tokens: int = 50,
                  batch_size: int = 8, mask_prefill: bool = False, stop_at_newline: bool = True,
                  executor: str | Executor = "local") -> dict[str, NiahRun]:
    """``run_conditions`` over a grid, each batch's answers written to ``out`` as they finish; {condition: NiahRun} of the whole folder.

    ``executor``: where batches are answered ("local", "ray" or an Executor, as for ``run_sweep``); not part of
    the settings, so a grid can be resumed under another executor.
    """
    executor = get_executor(executor)
    tests, masks = check_run(subject, grid.tests, conditions, max_new_tokens=max_new_tokens, batch_size=batch_size)
    executor.check(subject)
    recorded = set(masks) if record is True else set(record or ())
    keys = [grid_key(t) for t in tests]
    if len(set(keys)) != len(keys):
        raise InputError("NIAH tests must differ in (length, depth, needle_index) to be resumable: build them with niah_grid")
    settings = {"model": subject.name, "grid": grid.settings,
                "prompts_sha1": data_digest(*(t.input_ids for t in tests),
                                            np.array([[*t.needle_span, *t.answer_span] for t in tests])),
                "conditions": {name: [list(h) for h in heads] for name, heads in masks.items()},
                "record": sorted(recorded),
                **run_settings(max_new_tokens=max_new_tokens, mask_prefill=mask_prefill, stop_at_newline=stop_at_newline)}
    with niah_folder(out).open(settings, resume=resume) as folder:
        folder.update(model_facts=subject.facts(), status="running", finished=None,
                      started=(folder.previous or {}).get("started") or now())
        todo = [i for i, key in enumerate(keys) if key not in folder.done]
        bar = progress(total=len(tests) * len(masks), initial=(len(tests) - len(todo)) * len(masks),
                       desc=f"NIAH on {subject.name}", unit="answer")
        job = NiahJob(tests, keys, masks, recorded, max_new_tokens, mask_prefill, stop_at_newline)
        batches = [[todo[j] for j in batch] for batch in plan_batches([tests[i] for i in todo], batch_size)]
        try:
            with closing(executor.map(subject, functools.partial(BatchWorker, job=job), batches, bar.update)) as results:
                for _, rows in results:
                    folder.append(rows)
        finally:
            bar.close()
        runs = load_niah(out)
        answers = [r for name in masks for r in runs[name].table.to_dict("records")]
        atomic_write_text(Path(out) / ANSWERS, "".join(json.dumps(r, default=_plain) + "\n" for r in answers))
        folder.update(status="complete", finished=now(), accuracy={name: run.accuracy for name, run in runs.items()})
    return runs


def load_niah(out) -> dict[str, NiahRun]:
    """The answers in a NIAH folder (possibly still running) per condition, in grid order, with per-test head scores where recorded."""
    folder = niah_folder(out)
    meta, table = folder.read()
    if meta is None:
        raise InputError(f"{out} holds no NIAH run (no {MANIFEST}): run `workbench niah --out {out}` first")
    if not folder.is_current(meta):
        raise InputError(f"{out}: {LEGACY}; read its {ANSWERS} directly")
    settings = meta["settings"]
    df = pd.DataFrame(table.to_pylist()) if table is not None else pd.DataFrame()
    facts = meta.get("model_facts", {})
    shape = (int(facts.get("n_layers", 0)), int(facts.get("n_heads", 0)))
    runs = {}
    for name, heads in settings["conditions"].items():
        rows = (df[df["condition"] == name].drop_duplicates("test").sort_values("test_index") if len(df)
                else pd.DataFrame({c: [] for c in HELPER_COLUMNS}))
        scores = None
        if name in settings["record"]:
            scores = (np.stack([np.asarray(s, dtype=np.float32).reshape(shape) for s in rows["head_scores"]])
                      if len(rows) else np.zeros((0, *shape), np.float32))
        table_rows = rows.drop(columns=[c for c in HELPER_COLUMNS if c in rows]).reset_index(drop=True)
        runs[name] = NiahRun(table_rows, scores, {k: settings[k] for k in ("max_new_tokens", "mask_prefill",
                                                                           "stop_at_newline", "masking")}
                             | {"condition": name, "masked": heads})
    return runs


def _plain(value):
    """JSON for numpy scalars and arrays."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")

"""The workbench's own detectors, run unchanged on a planted model, scored against its ground truth.

Per world, each detector gives a (layers, heads) score, higher = more likely a mechanism head:

- temporal facts (Park et al. 2025): ``sweep_contrast`` = accuracy-free version of "in the temporal circuit but not
  in the invariant one": the drop of the answer log-probability when the head is zeroed (``run_sweep``, zero
  ablation) on time-conditioned items minus the drop on time-invariant items; ``patching`` = exact activation
  patching (``activation_patching``) of each head from the clean prompt into its year-swapped twin, metric
  logit(clean answer) - logit(corrupted answer), Park's clean/corrupted contrast (exact instead of EAP-IG);
  ``sweep`` = the uncontrasted drop on time-conditioned items.
- conflict facts (PH3, Jin et al. 2024): ``attribution`` and ``zero`` = minus each head's mean contribution to
  logit(o_m) - logit(o_c) (``head_contributions`` of the memory-vs-context analysis): context heads score high.
- kv retrieval (Wu et al. 2024): ``retrieval`` = the retrieval score from greedy NIAH answers (``run_niah``);
  ``sweep`` = the answer log-probability drop when zeroed; ``induction`` = the scan's induction score (the
  retrieval-head cross-check of METHODS s2).

A detector's top-k (k = the number of ground-truth heads by default) is compared with the ground truth (precision,
recall) and zeroed against random sets of as many other heads (the ablation contrast).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ...errors import InputError
from ...interventions import activation_patching
from ...knowledge.memory_context import head_contributions
from ...retrieval import run_niah, top_heads
from ...scanning import scan
from ...sweeps import run_sweep
from ...sweeps.report import effect_matrix
from .tasks import correct, needle_tests, planted_task, run_data
from .truth import GroundTruth, ablation_contrast, ground_truth
from .worlds import world

Head = tuple[int, int]
DETECTORS = {"temporal_facts": ("sweep_contrast", "patching", "sweep"),
             "conflict_facts": ("attribution", "zero"),
             "kv_retrieval": ("retrieval", "sweep", "induction")}


def _sweep_drop(subject, task, out: Path) -> np.ndarray:
    """(L, H) drop of the task's answer log-probability when each head alone is zeroed (a resumable sweep in out)."""
    df = run_sweep(subject, task, out, intervention="zero", metrics=["answer_logprob"], resume=True)
    return -effect_matrix(df, subject.n_layers, subject.n_heads, "answer_logprob")


def _year_patching(subject, w, items) -> np.ndarray:
    """(L, H) exact activation patching clean -> year-swapped on the time-conditioned items the model gets right
    both ways; metric logit(clean answer) - logit(corrupted answer) at the answer position."""
    clean = items.of("temporal")
    corrupt = w.year_swapped(clean)
    keep = correct(subject, clean) & correct(subject, corrupt)
    if not keep.any():
        raise InputError("the model answers no year-swapped pair right: train it further")
    clean, corrupt = clean.select(keep), corrupt.select(keep)
    q = clean.prompt_len - 1
    good, bad = clean.input_ids[:, -1], corrupt.input_ids[:, -1]

    def metric(logits):
        last = logits[:, q]
        rows = torch.arange(len(last))
        return last[rows, good.to(last.device)] - last[rows, bad.to(last.device)]

    prompt = slice(0, clean.prompt_len)
    return activation_patching(subject, corrupt.input_ids[:, prompt], clean.input_ids[:, prompt], metric)


def detector_scores(subject, data: dict | None = None, seed: int = 0, out: str | Path | None = None) -> dict:
    """{detector: (L, H) score} of every detector for the run's world (sweeps written under out, else a temp dir)."""
    data = run_data(data if data is not None else subject)
    w = world(data)
    items = w.all_test_items(seed)
    kind = data["kind"]
    with tempfile.TemporaryDirectory(prefix="planted-") as tmp:
        root = Path(out) if out is not None else Path(tmp)
        if kind == "temporal_facts":
            drop_t = _sweep_drop(subject, planted_task(subject, "temporal", data, seed), root / "sweep-temporal")
            drop_i = _sweep_drop(subject, planted_task(subject, "temporal_invariant", data, seed),
                                 root / "sweep-invariant")
            return {"sweep_contrast": drop_t - drop_i, "patching": _year_patching(subject, w, items),
                    "sweep": drop_t}
        if kind == "conflict_facts":
            batch = planted_task(subject, "knowledge_conflict", data, seed).batch
            return {m: -np.nanmean(head_contributions(subject, batch, m), 0) for m in ("attribution", "zero")}
        run = run_niah(subject, needle_tests(items), max_new_tokens=items.answer_len, batch_size=64)
        return {"retrieval": run.retrieval_scores(),
                "sweep": _sweep_drop(subject, planted_task(subject, "kv_retrieval", data, seed), root / "sweep-kv"),
                "induction": scan(subject, ["induction"], seed=seed,  # 50 tokens x 2; fewer in small vocabularies
                                  settings={"seq_len": min(50, subject.vocab_size // 2)}).matrix("induction")}


def precision_recall(scores: np.ndarray, truth, k: int) -> dict:
    """Precision and recall of the k top-scoring heads against the ground-truth heads (NaN recall if there are none)."""
    top = top_heads(scores, k)
    truth = set(map(tuple, truth))
    hits = len(truth & set(top))
    return {"top": top, "hits": hits, "precision": hits / k, "recall": hits / len(truth) if truth else float("nan")}


@dataclass
class PlantedCheck:
    """One model's check: held-out accuracy, ground truth, detector scores, and per detector P/R and ablation."""

    kind: str
    accuracy: dict
    truth: GroundTruth
    scores: dict
    table: pd.DataFrame  # one row per detector
    settings: dict = field(default_factory=dict)


def check_detectors(subject, data: dict | None = None, k: int | None = None, n_random: int = 5, seed: int = 0,
                    out: str | Path | None = None, relay: float | None | str = "world") -> PlantedCheck:
    """Ground truth, every detector's scores, and for each detector the precision/recall of its top-k (k = the number
    of ground-truth heads unless given) and the accuracy drops when its top-k vs random k other heads are zeroed
    (``relay`` as in ``ground_truth``)."""
    data = run_data(data if data is not None else subject)
    items = world(data).all_test_items(seed)
    truth = ground_truth(subject, items, relay=relay)
    k = k or len(truth.heads)
    if k < 1:
        raise InputError(f"no ground-truth heads in this model (attention map max "
                         f"{np.nanmax(truth.attention):.2f}, held-out accuracy {truth.intact}): the mechanism has "
                         "not formed; train it longer, or give k")
    scores = detector_scores(subject, data, seed, out)
    mech, ctrl = truth.mechanism, truth.control
    rows = []
    for name in DETECTORS[data["kind"]]:
        pr = precision_recall(scores[name], truth.heads, k)
        contrast = ablation_contrast(subject, items, pr["top"], n_random=n_random, seed=seed)
        mine, rnd = contrast.iloc[0], contrast.iloc[1:]
        rows.append({"detector": name, "k": k, "top": " ".join(f"L{l}H{h}" for l, h in pr["top"]),
                     "hits": pr["hits"], "precision": pr["precision"], "recall": pr["recall"],
                     f"drop_{mech}": mine[f"drop_{mech}"], f"drop_{ctrl}": mine[f"drop_{ctrl}"],
                     f"random_drop_{mech}": float(rnd[f"drop_{mech}"].mean()),
                     f"random_drop_{ctrl}": float(rnd[f"drop_{ctrl}"].mean()), "n_random": len(rnd)})
    return PlantedCheck(data["kind"], truth.intact, truth, scores, pd.DataFrame(rows),
                        {"k": k, "n_random": n_random, "seed": seed, "data": data})

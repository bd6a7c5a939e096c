"""Memory vs context heads (PH3, Jin et al. 2024, "Cutting Off the Head Ends the Conflict").

On knowledge-conflict prompts (``workbench.tasks.knowledge_conflict_task``: a counterfactual context, then the
question; target o_m = the memory answer, foil o_c = the context answer) the metric is
``d = logit(o_m) - logit(o_c)`` at the answer position. A head's **contribution** is what it adds to d:
``d(intact) - d(head zeroed)``; memory heads have contribution > 0, context heads < 0.

Three estimators, per item (B, L, H):

- ``"path"`` (PH3's definition): path patching from the head to the logits with a zero source
  (``patching.PathRun``: the head's z set to 0, every head of later layers frozen at its clean z, MLPs
  recomputed), one forward per head; exact, slow.
- ``"zero"``: the total effect of zero-ablating the head (every downstream path), exact, batched through the
  sweep engine (``workbench.sweeps.evaluate_cells``).
- ``"attribution"``: the first-order estimate of ``"zero"`` from one forward + backward,
  ``sum_{positions, d} z * dd/dz`` (attribution patching, Nanda 2023, with a zero source).

On smollm2-135m only L23H4's effect reaches the logits mostly directly; the other top heads (e.g. L11H8: total
-3.6, path to logits +0.02) act through later heads, so ``pruning_experiment`` selects heads by their total effect
(``"attribution"``, checked against ``"zero"``), not by the path-to-logits score.

Deviations from PH3: PH3 prunes on the full dataset of each model and reports the change in memory / context
usage rates; here heads are chosen on a seeded selection half of the items and the pruning effect is measured
on the held-out half, against random heads of the same number (several seeded draws). "Following" is pairwise:
an item follows the context when logit(o_c) > logit(o_m) at the answer position (not a free-generation check).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from ..errors import InputError
from ..inputs import as_heads
from ..interventions import ZeroHead, apply
from ..interventions.patching import GradProbe, PathRun, frozen_parameters, head_z
from ..models.attention import hooks_active
from ..progress import progress
from ..sweeps import Zero, baseline_values, evaluate_cells
from ..tasks.base import TaskBatch, gather_targets, metric_values
from ..tasks.metrics import METRICS

Head = tuple[int, int]
METHODS = ("attribution", "zero", "path")


def _check_batch(batch: TaskBatch) -> None:
    if batch.foil_ids is None:
        raise InputError("memory-vs-context scoring needs a foil (context answer) per item: use knowledge_conflict_task")


def _all_heads(subject) -> list[Head]:
    return [(layer, head) for layer in range(subject.n_layers) for head in range(subject.n_heads)]


def conflict_diff(subject, batch: TaskBatch, heads: list[Head] = (), batch_size: int = 32) -> np.ndarray:
    """Per-item logit(o_m) - logit(o_c) at the answer position, with ``heads`` zero-ablated (PH3's metric)."""
    _check_batch(batch)
    with apply(subject, *([ZeroHead(list(heads))] if heads else [])):
        return metric_values(subject, batch, [METRICS["logit_diff"]], batch_size=batch_size)["logit_diff"]


def _attribution(subject, batch: TaskBatch, batch_size: int) -> np.ndarray:
    out = []
    for start in range(0, len(batch), batch_size):
        part = batch.select(range(start, min(start + batch_size, len(batch))), trim=False)
        probe = GradProbe()
        with torch.enable_grad(), hooks_active(probe), frozen_parameters(subject.model):
            logits = subject.model(**part.model_inputs(subject.device), use_cache=False).logits.float()
            METRICS["logit_diff"](gather_targets(logits, part), part).sum().backward()
        mask = part.attention_mask.to(subject.device).float()[:, :, None, None]
        per = [(probe.z[l].float() * probe.probes[l].grad.float() * mask).sum((1, 3)) for l in range(subject.n_layers)]
        out.append(torch.stack(per, 1).double().cpu())  # (b, L, H)
    return torch.cat(out).numpy()


def _zero(subject, batch: TaskBatch, heads: list[Head]) -> np.ndarray:
    metric = [METRICS["logit_diff"]]
    base = baseline_values(subject, batch, metric)["logit_diff"]
    out = np.full((len(batch), subject.n_layers, subject.n_heads), np.nan)
    cells = [(h,) for h in heads]
    for result in progress(evaluate_cells(subject, batch, cells, Zero(), metric), total=len(cells), desc="zero"):
        (layer, head), = result.heads
        out[:, layer, head] = base - result.values["logit_diff"]
    return out


def _path(subject, batch: TaskBatch, heads: list[Head]) -> np.ndarray:
    inputs = batch.model_inputs(subject.device)
    z_base = head_z(subject, inputs)
    base = conflict_diff(subject, batch)
    out = np.full((len(batch), subject.n_layers, subject.n_heads), np.nan)
    for layer, head in progress(heads, desc="path patching"):
        run = PathRun((layer, head), torch.zeros_like(z_base[layer][:, :, head]), z_base, [])
        with hooks_active(run):
            out[:, layer, head] = base - metric_values(subject, batch, [METRICS["logit_diff"]],
                                                       batch_size=len(batch))["logit_diff"]
    return out


def head_contributions(subject, batch: TaskBatch, method: str = "attribution", heads=None,
                       batch_size: int = 16) -> np.ndarray:
    """(B, L, H) per-item contribution of each head to logit(o_m) - logit(o_c): d(intact) - d(head zeroed), by
    ``method`` "path" (PH3 path patching to the logits), "zero" (total effect) or "attribution" (first-order)."""
    _check_batch(batch)
    if method not in METHODS:
        raise InputError(f"unknown method {method!r}: use one of {', '.join(METHODS)}")
    heads = _all_heads(subject) if heads is None else as_heads(heads)
    if not heads:
        raise InputError("no heads to score: give [(layer, head), ...] or None for every head")
    for layer, head in heads:
        subject.check_head(layer, head)
    if method == "attribution":
        values = _attribution(subject, batch, batch_size)
        mask = np.full(values.shape[1:], np.nan)
        mask[tuple(zip(*heads))] = 1.0
        return values * mask
    if method == "zero":
        return _zero(subject, batch, heads)
    return _path(subject, batch, heads)


def split_items(n: int, seed: int = 0, fraction: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of item indices into a selection part (``fraction``) and a held-out part, both sorted."""
    if n < 2 or not 0 < fraction < 1:
        raise InputError(f"a split needs at least 2 items and 0 < fraction < 1, got n={n}, fraction={fraction}")
    perm = np.random.default_rng(seed).permutation(n)
    k = min(n - 1, max(1, round(n * fraction)))
    return np.sort(perm[:k]), np.sort(perm[k:])


def top_heads(contrib: np.ndarray, k: int, kind: str) -> list[Head]:
    """The k heads with the largest mean contribution ("memory") or the most negative ("context"), from (B, L, H) or (L, H)."""
    if kind not in ("memory", "context"):
        raise InputError(f"kind must be 'memory' or 'context', got {kind!r}")
    mean = np.nanmean(contrib, 0) if contrib.ndim == 3 else contrib
    score = np.where(np.isnan(mean), -np.inf, mean if kind == "memory" else -mean)
    order = np.argsort(-score, axis=None, kind="stable")[:k]
    return [tuple(int(i) for i in np.unravel_index(j, mean.shape)) for j in order]


def following(diff: np.ndarray) -> dict:
    """Shares of items whose memory answer wins (d > 0) and whose context answer wins (d < 0), and the mean d."""
    return {"memory_following": float(np.mean(diff > 0)), "context_following": float(np.mean(diff < 0)),
            "mean_diff": float(np.mean(diff))}


@dataclass
class PruningResult:
    """A held-out pruning experiment: the head map from the selection half and the effects on the held-out half."""

    contributions: np.ndarray  # (B_selection, L, H)
    memory_heads: list[Head]
    context_heads: list[Head]
    table: pd.DataFrame  # one row per condition (intact, memory heads, context heads, random draws)
    selection: np.ndarray
    held_out: np.ndarray
    settings: dict = field(default_factory=dict)

    @property
    def mean_map(self) -> np.ndarray:
        """(L, H) mean contribution over the selection items (> 0: memory head, < 0: context head)."""
        return np.nanmean(self.contributions, 0)

    def summary(self) -> pd.DataFrame:
        """Per pruned set: held-out shares, with the random draws summarised as mean and max."""
        t = self.table
        rnd = t[t["condition"] == "random"]
        rows = [t[t["condition"] == c].iloc[0].to_dict() for c in ("intact", "memory heads", "context heads")]
        for stat in ("mean", "max"):
            row = {"condition": f"random ({stat} of {len(rnd)})", "heads": ""}
            row.update({c: getattr(rnd[c], stat)() for c in ("memory_following", "context_following", "mean_diff")})
            rows.append(row)
        return pd.DataFrame(rows)


def pruning_experiment(subject, task, k: int = 5, seed: int = 0, n_random: int = 5, method: str = "attribution",
                       fraction: float = 0.5) -> PruningResult:
    """PH3 on a held-out split of ``task`` (a Task or TaskBatch): choose the top-k memory / context heads on a seeded
    selection half, then zero them (and ``n_random`` seeded random k-head sets) and measure following on the rest."""
    batch = task.batch if hasattr(task, "batch") else task
    _check_batch(batch)
    if k < 1 or k > subject.n_layers * subject.n_heads:
        raise InputError(f"k must lie in 1..{subject.n_layers * subject.n_heads}, got {k}")
    selection, held_out = split_items(len(batch), seed, fraction)
    contrib = head_contributions(subject, batch.select(selection), method)
    memory, context = top_heads(contrib, k, "memory"), top_heads(contrib, k, "context")
    held = batch.select(held_out)
    rng = np.random.default_rng(seed + 1)
    every = _all_heads(subject)
    randoms = [[every[i] for i in rng.choice(len(every), size=k, replace=False)] for _ in range(n_random)]
    named = [("memory heads", memory), ("context heads", context)] + [("random", h) for h in randoms]
    diffs = _pruned_diffs(subject, held, [h for _, h in named])
    rows = [{"condition": "intact", "heads": "", **following(diffs[()])}]
    draw = 0
    for name, heads in named:
        row = {"condition": name, "heads": _names(heads), **following(diffs[tuple(sorted(heads))])}
        if name == "random":
            row["draw"], draw = draw, draw + 1
        rows.append(row)
    settings = {"k": k, "seed": seed, "n_random": n_random, "method": method, "fraction": fraction,
                "n_selection": len(selection), "n_held_out": len(held_out)}
    return PruningResult(contrib, memory, context, pd.DataFrame(rows), selection, held_out, settings)


def _pruned_diffs(subject, batch: TaskBatch, head_sets) -> dict:
    """Per-item d with each head set zeroed together (and ``()``: intact), batched by the sweep engine."""
    metric = [METRICS["logit_diff"]]
    out = {(): baseline_values(subject, batch, metric)["logit_diff"]}
    cells = list(dict.fromkeys(tuple(sorted(h)) for h in head_sets))
    for result in evaluate_cells(subject, batch, cells, Zero(), metric):
        out[tuple(result.heads)] = result.values["logit_diff"]
    return out


def _names(heads) -> str:
    return " ".join(f"L{layer}H{head}" for layer, head in heads)

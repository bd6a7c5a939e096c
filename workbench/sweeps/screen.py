"""Attribution screening (AtP, AtP*): every head's estimated ablation effect from one forward + backward per prompt chunk.

For a head h of layer l, a prompt b and a metric M, with z the head's output before ``o_proj`` in the clean
run and z' what the ablation puts there (0, the reference mean, another prompt's z, a source run's z):

- **AtP** (attribution patching; Nanda 2023; Kramár et al. 2024, "AtP*: An efficient and scalable method for
  localizing LLM behaviour to components", arXiv 2403.00745, eq. 4): ``I(h, b) = sum_{positions, d} (z' - z) *
  dM_b/dz``, the gradient taken at the clean run. One backward gives it for every head. For ablations of z
  itself (zero, mean, resample, patch) nothing before z is linearised, so AtP's only error is the model's
  curvature after z.
- **Query-side ablations** (``query``: the head's query zeroed, so it attends uniformly): plain AtP
  linearises through the softmax, ``I = sum (q' - q) * dM/dq`` (computed here as the directional derivative of
  the head's output along q' - q, dotted with dM/dz: the same number).
- **QK fix** (AtP*, Sec. 3.1.1): recompute the head's attention exactly with q' and linearise only from the
  pattern onward, ``I = sum (A' - A) * dM/dA = sum (A'V - AV) * dM/dz``. It changes nothing for z-side
  ablations, where no query or key changes.
- **GradDrop** (AtP*, Sec. 3.1.2, eq. 11): for each layer d the backward pass is rerun with the gradient through
  layer d's residual contribution (its attention and MLP output together) set to zero, giving ``I_d``; the
  estimate is the magnitude ``(1/(L-1)) sum_d |I_d(h, b)|``, averaged over prompts. ``I_d`` equals AtP for
  d < l and is 0 for d = l (hence L - 1). Here one forward keeps the residual stream between layers and each
  ``I_d`` is one partial backward from layer d down (about L/2 backward passes in all). Deviation: the paper
  ranks by this magnitude; sweep rows carry it with the sign of the plain AtP mean, so signed views stay readable.
- **Cells of several heads** (layers, KV groups, pairs): the sum of their heads' terms (first order is additive);
  GradDrop takes ``|.|`` of the sum per dropped layer.

The estimates are per prompt, like the exact sweep's values: ``baseline_b + I(cell, b)`` is the estimated
metric of prompt b, so estimate rows have the same columns as exact rows (``runner.estimate_rows``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ..errors import InputError
from ..interventions.patching import GradProbe, frozen_parameters
from ..models.attention import exact_scores, hooks_active, softmax_rows
from ..patterns.memory import FLOAT32, available_bytes
from ..progress import progress
from ..tasks.base import TaskBatch, gather_targets
from ..tasks.metrics import get_metric
from .ablations import Ablation, get_ablation
from .residual import embed, logits_from, run_layers

Head = tuple[int, int]
Cell = tuple[Head, ...]
FIXES = ("qk", "graddrop")
DEFAULT_FIXES = ("qk",)
METHODS = ("attribution",)


def check_fixes(fixes) -> tuple[str, ...]:
    """AtP* fixes as a sorted tuple, from names or a comma-separated string ("qk", "graddrop"; "none" or "" = plain AtP)."""
    if fixes is None:
        return ()
    if isinstance(fixes, str):
        fixes = [] if fixes.strip().lower() in ("", "none") else fixes.split(",")
    out = sorted({str(f).strip().lower() for f in fixes})
    unknown = [f for f in out if f not in FIXES]
    if unknown:
        raise InputError(f"unknown AtP* fix {', '.join(map(repr, unknown))}: use qk, graddrop, both (qk,graddrop) or none")
    return tuple(out)


def method_name(fixes) -> str:
    """The estimator's name in a sweep's rows: atp (no fix), atp+qk, atp+graddrop, or atp* (both fixes, Kramár et al. 2024)."""
    fixes = check_fixes(fixes)
    return "atp*" if len(fixes) == len(FIXES) else "+".join(("atp", *fixes))


@dataclass
class HeadEstimates:
    """Per-prompt first-order effects of one ablation on every head, per metric.

    ``atp[metric]``: (B, L, H) AtP terms (with the QK fix when asked); ``dropped[metric]``: (L, B, L, H), the
    GradDrop terms ``I_d`` for each dropped layer d, or None without GradDrop; ``seconds``: the screen's time.
    """

    method: str
    atp: dict[str, np.ndarray]
    dropped: dict[str, np.ndarray] | None
    seconds: float

    def cell(self, cell: Cell, metric: str) -> np.ndarray:
        """(B,) estimated effect of ablating the cell's heads together: the sum of their terms; GradDrop: (1/(L-1)) sum_d |sum of their I_d|, signed like the summed AtP mean."""
        layers, heads = [l for l, _ in cell], [h for _, h in cell]
        atp = self.atp[metric][:, layers, heads].sum(1)
        if self.dropped is None:
            return atp
        terms = self.dropped[metric][:, :, layers, heads].sum(2)  # (L, B)
        return np.abs(terms).sum(0) / (terms.shape[0] - 1) * (1.0 if atp.mean() >= 0 else -1.0)

    def matrix(self, metric: str) -> np.ndarray:
        """(L, H) mean estimated effect of each single head."""
        n_layers, n_heads = self.atp[metric].shape[1:]
        return np.array([[self.cell(((l, h),), metric).mean() for h in range(n_heads)] for l in range(n_layers)])


def screen_chunk(subject, batch: TaskBatch, n_keep: int, max_rows: int | None = None) -> int:
    """Prompts per forward + backward of the screen: one prompt's autograd graph (every layer's saved activations) against the free memory."""
    if max_rows is not None:
        return max(1, int(max_rows))
    d_ff = getattr(subject.model.config, "intermediate_size", 4 * subject.d_model)
    n = batch.n_tokens
    per_row = FLOAT32 * (n * subject.n_layers * (16 * subject.d_model + 6 * d_ff + 3 * subject.n_heads * n)
                         + 4 * n_keep * subject.vocab_size)
    free = available_bytes(subject.device)
    budget = 0.3 * free if subject.device.type == "cuda" else min(2 << 30, 0.25 * free)
    return int(max(1, min(len(batch), budget // per_row)))


def _query_delta(probe: GradProbe, layer: int, ablation: Ablation, prompts: torch.Tensor, exact: bool) -> torch.Tensor:
    """(b, N, H, D) change of every head's output when its query is replaced: exact (QK fix) or linearised at q."""
    call, q, k, v = probe.calls[layer], probe.q[layer], probe.k[layer], probe.v[layer]
    if call.activation != "softmax":
        raise InputError(f"query-side screening needs softmax attention; layer {layer} uses {call.activation} attention")
    q = q.float()
    step = ablation.replacement(layer, q, prompts).float() - q
    out = []
    for head in range(call.n_heads):
        values = v[:, head // call.group].float()

        def attend(query, head=head, values=values):
            return torch.matmul(softmax_rows(exact_scores(call, query, k, [head]))[:, 0], values)

        if exact:
            out.append(attend(q + step) - attend(q))
        else:
            tangent = torch.zeros_like(q)
            tangent[:, head] = step[:, head]
            out.append(torch.func.jvp(attend, (q,), (tangent,))[1])
    return torch.stack(out, 2).nan_to_num(0.0)  # (b, N, H, D)


def _terms(deltas: dict[int, torch.Tensor], grads: Sequence[torch.Tensor | None]) -> np.ndarray:
    """(b, len(grads), H): sum over positions and dimensions of delta z * dM/dz, layer by layer (None = no gradient)."""
    out = []
    for layer, g in enumerate(grads):
        d = deltas[layer]
        out.append(torch.zeros(d.shape[0], d.shape[2], dtype=torch.float64) if g is None
                   else (d.double() * g.double()).sum((1, 3)).cpu())
    return torch.stack(out, 1).numpy()


def screen_heads(subject, batch: TaskBatch, ablation, metrics: Sequence, *, fixes=DEFAULT_FIXES,
                 max_rows: int | None = None) -> HeadEstimates:
    """Per-prompt AtP estimate (AtP* fixes ``fixes``) of the ablation's effect on each metric, for every head: one forward and one backward per prompt chunk, plus one partial backward per layer with GradDrop."""
    fixes = check_fixes(fixes)
    ablation = get_ablation(ablation)
    metrics = [get_metric(m) for m in metrics]
    graddrop = "graddrop" in fixes
    n_layers, n_heads = subject.n_layers, subject.n_heads
    if graddrop and n_layers < 2:
        raise InputError("GradDrop needs a model with at least 2 layers (it drops one layer's gradient at a time)")
    if ablation.side not in ("z", "query"):
        raise InputError(f"the {ablation.name} ablation cannot be screened: it replaces neither z nor the query")
    began = time.perf_counter()
    keep = batch.keep_positions()
    per_chunk = screen_chunk(subject, batch, len(keep), max_rows)
    ablation.prepare(subject, batch, set(range(n_layers)), per_chunk)
    n = len(batch)
    atp = {m.name: np.zeros((n, n_layers, n_heads)) for m in metrics}
    dropped = {m.name: np.zeros((n_layers, n, n_layers, n_heads)) for m in metrics} if graddrop else None
    chunks = [range(i, min(i + per_chunk, n)) for i in range(0, n, per_chunk)]
    for rows in progress(chunks, desc=f"{method_name(fixes)} screen", unit="chunk", leave=False):
        part = batch.select(rows, trim=False)
        x = part.model_inputs(subject.device)
        prompts = torch.as_tensor(list(rows))
        sel = slice(rows.start, rows.stop)
        probe = GradProbe(inputs=ablation.side == "query")
        with torch.enable_grad(), hooks_active(probe), frozen_parameters(subject.model):
            hidden = [embed(subject, x["input_ids"])]
            if graddrop:  # the stream between layers stays in the graph, so a backward can skip one layer's block
                for layer in range(n_layers):
                    hidden.append(run_layers(subject, hidden[-1], x["attention_mask"], layer, layer + 1))
            logits = logits_from(subject, hidden[-1], x["attention_mask"], len(hidden) - 1, keep)
            target = gather_targets(logits, part, keep)
            with torch.no_grad():
                if ablation.side == "z":
                    deltas = {l: ablation.replacement(l, probe.z[l], prompts) - probe.z[l] for l in range(n_layers)}
                else:
                    deltas = {l: _query_delta(probe, l, ablation, prompts, exact="qk" in fixes) for l in range(n_layers)}
            probes = [probe.probes[l] for l in range(n_layers)]
            for m in metrics:
                value = m(target, part)
                if not value.requires_grad:
                    raise InputError(f"metric {m.name!r} is not differentiable, so it cannot be screened by attribution: "
                                     "use loss, answer_logprob, answer_prob or logit_diff (or sweep it exactly)")
                grads = torch.autograd.grad(value.sum(), probes + hidden[1:], retain_graph=True, allow_unused=True)
                atp[m.name][sel] = _terms(deltas, grads[:n_layers])
                if graddrop:
                    out = dropped[m.name]
                    for d in range(n_layers):
                        out[d, sel, d + 1:] = atp[m.name][sel, d + 1:]  # later layers: unchanged by dropping d
                        out[d, sel, d] = 0.0  # the node's own layer: its whole contribution dropped
                        if d and grads[n_layers + d] is not None:  # grads[n_layers + d] = dM/d(stream after layer d)
                            below = torch.autograd.grad(hidden[d], probes[:d], grad_outputs=grads[n_layers + d],
                                                        retain_graph=True, allow_unused=True)
                            out[d, sel, :d] = _terms(deltas, below)
        del hidden, logits, target, probe
    return HeadEstimates(method_name(fixes), atp, dropped, time.perf_counter() - began)


def verification_cells(names: Sequence[str], estimates: Sequence[float], k: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """(top, calibration): the ``k`` cells with the largest |estimate| (ties in listing order) and ``k`` of the others drawn at random (seeded)."""
    k = int(k)
    if k < 1:
        return [], []
    est = np.abs(np.asarray(estimates, dtype=float))
    order = np.argsort(-np.nan_to_num(est, nan=-1.0), kind="stable")
    top, rest = order[:k], order[k:]
    calibration = np.sort(np.random.default_rng(seed).choice(rest, size=min(k, len(rest)), replace=False)) if len(rest) else rest
    return [names[i] for i in top], [names[i] for i in calibration]

"""Streamed attention statistics for long contexts: one forward pass, never an N x N matrix.

The StatsRecorder hook hands each selected layer's post-RoPE queries and keys to
``workbench.kernels.attention_stats`` (Triton on a GPU, the float32 key-tile path on a CPU)
while the layer's own output still comes from SDPA, so the same forward pass gives the model's
normal output (``capture_stats(..., logits=True)``) and the statistics.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from ..errors import InputError
from ..models.attention import AttentionCall, AttentionHook, active_hooks, hooks_active
from .capture import ZRecorder, memory_plan, too_big
from .memory import FLOAT32, Budget, ModelDims, Prediction, forward_peak, largest_step, steady_allocator


class StatsRecorder(AttentionHook):
    """Reduces the requested statistics for each selected layer and keeps them on the CPU."""

    def __init__(self, layers, request, backend: str = "auto"):
        self.layers = frozenset(layers)
        self.request = request
        self.backend = backend
        self.stats: dict[int, list[dict[str, torch.Tensor]]] = {layer: [] for layer in self.layers}

    def on_qk(self, call: AttentionCall, query, key):
        from ..kernels import attention_stats

        if call.activation != "softmax":
            raise InputError(f"layer {call.layer} uses {call.activation} attention; the statistics kernels assume "
                             "softmax rows: use exact capture (workbench.patterns.capture)")
        if any(h.applies(call.layer) and h.edits_scores(call) for h in active_hooks()):
            raise InputError(f"a hook edits layer {call.layer}'s attention scores (e.g. KnockOutKeys, ScaleKeys), "
                             "which streamed statistics from q and k cannot see: use exact capture for that layer")
        key_mask = None
        if call.visible is not None:  # a padded batch: keys no query may see are padding
            seen = call.visible[:, 0].any(-2).expand(query.shape[0], -1)
            key_mask = None if bool(seen.all()) else seen
        out = attention_stats(query, key, self.request, scale=call.scaling, window=call.window,
                              key_mask=key_mask, softcap=call.softcap, backend=self.backend)
        self.stats[call.layer].append({k: v.detach().cpu() for k, v in out.items()})


@dataclass
class StatsCapture:
    """Statistics per layer: ``stats[layer][name]`` with the kernels' shapes (B, H, Nq, ...) or reduced;
    ``logits`` (B, N, vocab) float32 from the same forward pass when asked for."""

    input_ids: torch.Tensor
    stats: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)
    logits: torch.Tensor | None = None
    z: dict[int, torch.Tensor] = field(default_factory=dict)  # (B, N, H, D) per layer, when asked for
    memory: dict = field(default_factory=dict)  # the prediction and the step used

    def stacked(self, name: str) -> torch.Tensor:
        """One statistic for every captured layer: (L, ...) in layer order."""
        return torch.stack([self.stats[layer][name] for layer in sorted(self.stats)])


def stats_bytes(request, n_heads: int, batch: int, n_queries: int, n_keys: int) -> int:
    """Bytes of one layer's statistics as the kernels return them (B, Hq, Nq, ...), before any reduction."""
    per_query = 1 + int(request.entropy) + int(request.first_k is not None)  # lse, entropy, first-k mass
    per_query += 0 if request.spans is None else request.spans.shape[1]
    per_query += 0 if request.lag_bins is None else len(request.lag_bins) - 1
    per_query += 0 if request.targets is None else 2 * len(request.target_lags)
    per_query += 0 if request.topk is None else 3 * request.topk  # int64 index + float32 probability
    rows = 0 if request.rows is None else len(request.rows) * n_keys
    return batch * n_heads * (n_queries * per_query + rows) * FLOAT32


def reference_temp_bytes(request, n_heads: int, batch: int, n_queries: int, n_keys: int) -> int:
    """Transient bytes of the kernels' chunked PyTorch reference: four float32 copies of one query chunk of scores
    (masked scores, s - lse, its exp, a statistic's product with the probabilities; with the int64 lags and boolean
    masks of the chunk they measured 3.4 copies on smollm2-135m; a sort's values and int64 indices for top-k), and
    the chunks' outputs while they are concatenated."""
    from ..kernels.reference import CHUNK_ELEMENTS

    row = batch * n_heads * n_keys
    chunk = min(n_queries, max(1, CHUNK_ELEMENTS // max(1, row))) * row
    copies = 4 + (3 if request.topk is not None else 0)
    return copies * chunk * FLOAT32 + stats_bytes(request, n_heads, batch, n_queries, n_keys)


def predict_stats(dims: ModelDims, request, batch: int, n_tokens: int, *, n_layers: int | None = None,
                  step: int | None = None, device_type: str = "cpu", logits: bool = False,
                  padded: bool = False, extra_kept: int = 0, n_logits: int | None = None) -> Prediction:
    """Peak memory of ``capture_stats`` on ``batch`` x ``n_tokens`` in steps of ``step`` rows: the statistics of
    ``n_layers`` layers kept (twice while several steps are joined), the model's activations at one step, and the
    kernels' working memory in one layer (the reference's chunk on a CPU; the outputs on a GPU)."""
    step = min(step or batch, batch)
    n_layers = dims.n_layers if n_layers is None else n_layers
    kept_queries = 1 if request.reduce == "mean" else n_tokens  # "mean" keeps one value per row and head
    kept = n_layers * stats_bytes(request, dims.n_heads, batch, kept_queries, n_tokens) * (1 if step == batch else 2)
    if device_type == "cpu":
        extra = reference_temp_bytes(request, dims.n_heads, step, n_tokens, n_tokens)
    else:
        extra = 2 * stats_bytes(request, dims.n_heads, step, n_tokens, n_tokens)
    n_logits = n_logits or (n_tokens if logits else 1)  # positions whose logits the model computes per row
    return forward_peak(dims, step, n_tokens, device_type=device_type, n_logits=n_logits,
                        kept=kept + extra_kept + (batch * n_tokens * dims.vocab * FLOAT32 if logits and (
                            device_type != "cpu" or step < batch) else 0),  # else the model's logits are the kept ones
                        layer_extra=extra, padded=padded)


def request_rows(request, rows: slice):
    """The request for a slice of the batch (its per-row targets and spans sliced)."""
    return dataclasses.replace(request, **{name: getattr(request, name)[rows] for name in ("targets", "spans")
                                           if getattr(request, name) is not None})


@torch.no_grad()
def capture_stats(subject, inputs, request, *, layers=None, backend: str = "auto", logits: bool = False,
                  z: bool = False, extra_hooks=(), batch_size: int | None = None,
                  budget: Budget | None = None) -> StatsCapture:
    """Run ``inputs`` once and return the requested attention statistics (an AttentionStatsRequest) per layer,
    and the model's logits (``logits``) and the layers' head outputs z (``z``) from that same pass. The batch runs
    in steps of ``batch_size`` rows (default: the largest whose predicted peak fits ``budget``, by default half
    the free memory)."""
    batch = subject.as_batch(inputs)
    n_batch, n_tokens = batch["input_ids"].shape
    layers = list(range(subject.n_layers)) if layers is None else [int(l) for l in layers]
    for layer in layers:
        subject.check_head(layer, 0)
    if batch_size is not None and batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    steady_allocator()
    dims, budget = ModelDims.of(subject), budget or Budget.now(subject.device)

    def predict(step: int) -> Prediction:
        return predict_stats(dims, request, n_batch, n_tokens, n_layers=len(layers), step=step,
                             device_type=subject.device.type, logits=logits, padded="attention_mask" in batch,
                             extra_kept=len(layers) * n_batch * n_tokens * dims.q_width * FLOAT32 if z else 0)

    step = batch_size or largest_step(predict, n_batch, budget)
    if step == 0 or not budget.allows(predict(step)):
        raise too_big(f"streamed statistics of {len(layers)} layers for {n_batch} x {n_tokens} tokens",
                      predict(max(step, 1)), budget, "Ask for fewer statistics or layers, or use shorter inputs.")
    recorder = StatsRecorder(layers, request, backend)
    zrec = ZRecorder(layers, n_batch if step < n_batch else None) if z else None
    out_logits = []
    with hooks_active(recorder, *([zrec] if zrec else []), *extra_hooks):
        for start in range(0, n_batch, step):
            rows = slice(start, start + step)
            recorder.request = request_rows(request, rows)
            if zrec:
                zrec.kept.start = start
            out = subject.model(**{k: v[rows] for k, v in batch.items()}, use_cache=False,
                                **subject.logits_kwargs(logits))
            if logits:
                out_logits.append(out.logits.float().cpu())
            del out
    stats = {}
    for layer, parts in recorder.stats.items():
        stats[layer] = {name: torch.cat([p[name] for p in parts]) for name in parts[0]} if len(parts) > 1 else parts[0]
    return StatsCapture(input_ids=batch["input_ids"].cpu(), stats=stats,
                        logits=(torch.cat(out_logits) if len(out_logits) > 1 else out_logits[0]) if logits else None,
                        z=zrec.z if zrec else {},
                        memory=memory_plan("streamed", step, n_batch, predict(step), budget,
                                           "asked for" if batch_size else "fits"))

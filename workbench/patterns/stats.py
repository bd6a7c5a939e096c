"""Streamed attention statistics for long contexts: one forward pass, never an N x N matrix.

The StatsRecorder hook hands each selected layer's post-RoPE queries and keys to
``workbench.kernels.attention_stats`` (Triton on a GPU, the float32 key-tile path on a CPU)
while the layer's own output still comes from SDPA, so the same forward pass gives the model's
normal output (``capture_stats(..., logits=True)``) and the statistics.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import torch

from ..errors import InputError
from ..models.attention import AttentionCall, AttentionHook, active_hooks, hooks_active


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

    def stacked(self, name: str) -> torch.Tensor:
        """One statistic for every captured layer: (L, ...) in layer order."""
        return torch.stack([self.stats[layer][name] for layer in sorted(self.stats)])


@torch.no_grad()
def capture_stats(subject, inputs, request, *, layers=None, backend: str = "auto", logits: bool = False,
                  extra_hooks=()) -> StatsCapture:
    """Run ``inputs`` once and return the requested attention statistics (an AttentionStatsRequest) per layer,
    and the model's logits from that same pass if ``logits``."""
    batch = subject.as_batch(inputs)
    layers = list(range(subject.n_layers)) if layers is None else [int(l) for l in layers]
    for layer in layers:
        subject.check_head(layer, 0)
    recorder = StatsRecorder(layers, request, backend)
    if not logits and "logits_to_keep" in inspect.signature(subject.model.forward).parameters:
        batch = {**batch, "logits_to_keep": 1}  # N x vocab logits would outweigh the statistics at long N
    with hooks_active(recorder, *extra_hooks):
        out = subject.model(**batch, use_cache=False)
    stats = {}
    for layer, parts in recorder.stats.items():
        stats[layer] = {name: torch.cat([p[name] for p in parts]) for name in parts[0]} if len(parts) > 1 else parts[0]
    return StatsCapture(input_ids=batch["input_ids"].cpu(), stats=stats,
                        logits=out.logits.float().cpu() if logits else None)

"""Run a suffix of the model from a cached residual stream (prefix reuse for ablation sweeps).

An intervention on a head of layer ``l`` leaves layers ``0..l-1`` unchanged, so a sweep computes the
clean residual stream entering layer ``l`` once and runs only layers ``l..`` per ablation. The model's
own forward does the work, whatever the architecture: for the duration of one call the decoder layers
before ``start`` are replaced by pass-through stand-ins and layer ``start`` is handed the cached stream
in place of whatever reaches it (so embeddings, learned positions, embedding scales and projections are
computed and discarded, while masks, positions and per-layer types come from the model as usual); to
stop early, layer ``stop`` is replaced by a stand-in that hands its input back (to stop after the last layer,
before the final norm, the last layer runs inside a stand-in that hands its output back). The decoder layers come
from the Subject's architecture (``subject.layers``). Tested equal to a full forward on every
architecture of tests/architectures.
"""

from __future__ import annotations

import contextlib

import torch


class _Stopped(Exception):
    def __init__(self, hidden):
        super().__init__("stopped")
        self.hidden = hidden


class _PassThrough(torch.nn.Module):
    """Stands in for a decoder layer: returns the residual stream unchanged."""

    def __init__(self, layer):
        super().__init__()
        self.attention_type = getattr(layer, "attention_type", None)

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


class _StopHere(_PassThrough):
    """Stands in for decoder layer ``stop``: ends the forward, handing back the stream entering it."""

    def forward(self, hidden_states, *args, **kwargs):
        raise _Stopped(hidden_states)


class _RunThenStop(_PassThrough):
    """Stands in for the last decoder layer: runs it, then ends the forward, handing back the stream after it."""

    def __init__(self, layer):
        super().__init__(layer)
        self.layer = layer

    def forward(self, hidden_states, *args, **kwargs):
        out = self.layer(hidden_states, *args, **kwargs)
        raise _Stopped(out[0] if isinstance(out, tuple) else out)


class _Inject(torch.nn.Module):
    """Wraps decoder layer ``start``: runs it on the cached stream instead of the stream that reaches it."""

    def __init__(self, layer, hidden):
        super().__init__()
        self.layer = layer
        self.hidden = hidden
        self.attention_type = getattr(layer, "attention_type", None)

    def forward(self, hidden_states, *args, **kwargs):
        return self.layer(self.hidden, *args, **kwargs)


class _Emit(_PassThrough):
    """Stands in for the last decoder layer when every layer is skipped: hands back the cached stream (logits from it)."""

    def __init__(self, layer, hidden):
        super().__init__(layer)
        self.hidden = hidden

    def forward(self, hidden_states, *args, **kwargs):
        return self.hidden


@contextlib.contextmanager
def _layers_replaced(subject, start: int, stop: int | None = None, hidden: torch.Tensor | None = None):
    layers = subject.layers
    saved = {}
    try:
        for i in range(start):
            saved[i] = layers[i]
            layers[i] = _PassThrough(saved[i])
        if stop is not None and stop < len(layers):
            saved[stop] = layers[stop]
            layers[stop] = _StopHere(saved[stop])
        elif stop is not None and start < len(layers):
            last = len(layers) - 1
            saved[last] = layers[last]
            layers[last] = _RunThenStop(saved[last])
        if hidden is not None and start < len(layers) and (stop is None or start < stop):
            saved.setdefault(start, layers[start])
            layers[start] = _Inject(layers[start], hidden)
        elif hidden is not None and start >= len(layers) and stop is None:
            layers[-1] = _Emit(layers[-1], hidden)
        yield
    finally:
        for i, module in saved.items():
            layers[i] = module


def _placeholder(subject, hidden: torch.Tensor) -> torch.Tensor:
    """Input embeddings of the right shape whose values are never used (layer ``start`` gets the cached stream)."""
    width = subject.model.get_input_embeddings().embedding_dim
    return torch.zeros(*hidden.shape[:-1], width, device=hidden.device, dtype=hidden.dtype)


@torch.no_grad()
def embed(subject, input_ids: torch.Tensor, attention_mask=None) -> torch.Tensor:
    """The residual stream entering layer 0 (embeddings, learned positions and embedding scales included)."""
    ids = input_ids.to(subject.device)
    mask = torch.ones_like(ids) if attention_mask is None else attention_mask.to(subject.device)
    with _layers_replaced(subject, 0, 0):
        try:
            subject.model(input_ids=ids, attention_mask=mask, use_cache=False, logits_to_keep=1)
        except _Stopped as done:
            return done.hidden
    raise RuntimeError("layer 0 was never reached")


@torch.no_grad()
def residual(subject, hidden: torch.Tensor, attention_mask, start: int, stop: int) -> torch.Tensor:
    """The residual stream entering layer ``stop``, given the stream ``hidden`` entering layer ``start``."""
    return run_layers(subject, hidden, attention_mask, start, stop)


def run_layers(subject, hidden: torch.Tensor, attention_mask, start: int, stop: int) -> torch.Tensor:
    """``residual`` with autograd: the stream entering layer ``stop`` as a function of ``hidden`` (GradDrop cuts the graph between layers)."""
    if stop <= start:
        return hidden
    with _layers_replaced(subject, start, stop, hidden):
        try:
            subject.model(inputs_embeds=_placeholder(subject, hidden), attention_mask=attention_mask,
                          use_cache=False, logits_to_keep=1)
        except _Stopped as done:
            return done.hidden
    raise RuntimeError(f"layer {stop} was never reached")


def logits_from(subject, hidden: torch.Tensor, attention_mask, start: int, keep: torch.Tensor | None = None) -> torch.Tensor:
    """Float32 logits (B, K, V) at positions ``keep`` (all if None), running layers ``start..`` on ``hidden``."""
    with _layers_replaced(subject, start, hidden=hidden):
        out = subject.model(inputs_embeds=_placeholder(subject, hidden), attention_mask=attention_mask,
                            use_cache=False, logits_to_keep=0 if keep is None else keep.to(hidden.device))
    return out.logits.float()

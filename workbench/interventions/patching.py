"""Activation, path and attribution patching at per-head outputs (z before ``o_proj``).

Conventions: ``base`` is the run being edited (usually the corrupted prompt), ``source`` the run the
patched values come from (usually the clean prompt), both the same shape. ``metric(logits (B, N, V))``
returns one value per prompt (B,); an effect is ``mean(metric(patched) - metric(base))``.

- Activation patching (Meng et al. 2022; Wang et al. 2022): one forward per head with its z replaced by
  the source's z. ``activation_patching`` is the plain, one-hook-per-forward reference; sweeps batch it
  (``workbench.sweeps``, ablation ``Patch``).
- Path patching (Wang et al. 2022, IOI, Sec. 3.1; Goldowsky-Dill et al. 2023): the sender's effect through
  chosen receivers only. Run 1: base run with the sender set to its source z and every head of later
  layers frozen at its base z; record what the receivers would compute there. Run 2: base run with only
  the receivers' z set to the recorded values. Receivers ``None`` = the logits: the effect of run 1 itself
  (sender -> residual stream -> unembedding, MLPs recomputed, every other head frozen). Patching a
  receiver's z from run 1 equals patching its query, key and value inputs together (the head's whole
  input); per-input (q only / k only / v only) path patching is not implemented.
- Attribution patching (Nanda 2023; Syed et al. 2023): first-order estimate of every head's activation-
  patching effect from one forward+backward on base: ``sum_{positions, d} (z_source - z_base) * dmetric/dz``.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Sequence

import numpy as np
import torch

from ..errors import InputError
from ..inputs import as_heads
from ..models.attention import AttentionHook, hooks_active
from ..patterns import capture
from .hook import apply
from .specs import ReplaceHead

Head = tuple[int, int]
MetricFn = Callable[[torch.Tensor], torch.Tensor]


def _pair(subject, base, source) -> tuple[dict, dict]:
    base, source = subject.as_batch(base), subject.as_batch(source)
    if base["input_ids"].shape != source["input_ids"].shape:
        raise InputError(f"patching needs base and source of the same shape, got {tuple(base['input_ids'].shape)} "
                         f"and {tuple(source['input_ids'].shape)}: pad or pick prompts of equal length")
    return base, source


def head_z(subject, inputs, layers=None) -> dict[int, torch.Tensor]:
    """Per-head outputs z (B, N, H, D) float32 of every (or the given) layer, from one clean forward."""
    cap = capture(subject, inputs, layers=layers, patterns=False, z=True)
    return cap.z


def _metric_of(subject, batch: dict, metric: MetricFn) -> torch.Tensor:
    with torch.no_grad():
        return metric(subject.model(**batch, use_cache=False).logits.float()).double().cpu()


def activation_patching(subject, base, source, metric: MetricFn, heads: Sequence[Head] | None = None) -> np.ndarray:
    """(L, H) mean effect of patching each head's z from source into base, one forward per head (NaN where not run)."""
    base, source = _pair(subject, base, source)
    heads = [(l, h) for l in range(subject.n_layers) for h in range(subject.n_heads)] if heads is None else as_heads(heads)
    z_src = head_z(subject, source, layers=sorted({l for l, _ in heads}))
    ref = _metric_of(subject, base, metric)
    out = np.full((subject.n_layers, subject.n_heads), np.nan)
    for layer, head in heads:
        with apply(subject, ReplaceHead([(layer, head)], values={(layer, head): z_src[layer][:, :, head]})):
            out[layer, head] = float((_metric_of(subject, base, metric) - ref).mean())
    return out


class PathRun(AttentionHook):
    """Run 1 of path patching: sender <- source z, later layers' heads frozen at base z, receivers recorded."""

    def __init__(self, sender: Head, z_source, z_base, receivers: Sequence[Head]):
        self.sender = sender
        self.z_source, self.z_base = z_source, z_base
        self.receivers = {}
        for layer, head in receivers:
            self.receivers.setdefault(layer, []).append(head)
        self.recorded: dict[Head, torch.Tensor] = {}

    def edit_z(self, call, z):
        layer = call.layer
        if layer < self.sender[0]:
            return z
        if layer == self.sender[0]:
            z = z.clone()
            z[:, :, self.sender[1]] = self.z_source.to(z.device, z.dtype)
            return z
        for head in self.receivers.get(layer, []):
            self.recorded[(layer, head)] = z[:, :, head].detach().float().cpu()
        return self.z_base[layer].to(z.device, z.dtype)  # every head of a later layer frozen


def path_patching(subject, base, source, sender: Head, metric: MetricFn,
                  receivers: Sequence[Head] | None = None) -> torch.Tensor:
    """Per-prompt effect (B,) of the sender's source z reaching the receivers' inputs (or, receivers None, the logits) only."""
    base, source = _pair(subject, base, source)
    subject.check_head(*sender)
    receivers = [tuple(r) for r in receivers] if receivers is not None else None
    for layer, head in receivers or []:
        subject.check_head(layer, head)
        if layer <= sender[0]:
            raise InputError(f"receiver L{layer}H{head} is not after the sender L{sender[0]}H{sender[1]}: "
                             "receivers must sit in later layers")
    later = list(range(sender[0] + 1, subject.n_layers))
    z_base = head_z(subject, base, layers=later) if later else {}
    z_source = head_z(subject, source, layers=[sender[0]])[sender[0]][:, :, sender[1]]
    ref = _metric_of(subject, base, metric)
    run1 = PathRun(sender, z_source, z_base, receivers or [])
    with hooks_active(run1):
        patched = _metric_of(subject, base, metric)
    if receivers is None:
        return patched - ref
    spec = ReplaceHead(receivers, values=dict(run1.recorded))
    with apply(subject, spec):
        return _metric_of(subject, base, metric) - ref


class GradProbe(AttentionHook):
    """Adds a zero leaf to every layer's z so that one backward gives dmetric/dz for every head.

    ``inputs=True`` also keeps each layer's attention inputs (detached): ``calls``, ``q`` (B, H, N, D) post-RoPE,
    ``k`` and ``v`` (B, Hkv, N, D), from which a head's attention can be recomputed.
    """

    def __init__(self, inputs: bool = False):
        self.probes: dict[int, torch.Tensor] = {}
        self.z: dict[int, torch.Tensor] = {}
        self.inputs = inputs
        self.calls: dict[int, object] = {}
        self.q: dict[int, torch.Tensor] = {}
        self.k: dict[int, torch.Tensor] = {}
        self.v: dict[int, torch.Tensor] = {}

    def on_qk(self, call, query, key):
        if self.inputs:
            self.calls[call.layer] = call
            self.q[call.layer], self.k[call.layer] = query.detach(), key.detach()

    def on_value(self, call, value):
        if self.inputs:
            self.v[call.layer] = value.detach()

    def edit_z(self, call, z):
        probe = torch.zeros_like(z, requires_grad=True)
        self.probes[call.layer] = probe
        self.z[call.layer] = z.detach()
        return z + probe


@contextlib.contextmanager
def frozen_parameters(model):
    """Parameters without gradients inside the block (only the z probes need them), restored afterwards."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def attribution_patching(subject, base, source, metric: MetricFn) -> np.ndarray:
    """(L, H) first-order estimate of each head's activation-patching effect: mean over prompts of sum (z_src - z_base) * dmetric/dz."""
    base, source = _pair(subject, base, source)
    z_src = head_z(subject, source)
    probe = GradProbe()
    with torch.enable_grad(), hooks_active(probe), frozen_parameters(subject.model):
        value = metric(subject.model(**base, use_cache=False).logits.float())
        value.sum().backward()
    n = base["input_ids"].shape[0]
    mask = base.get("attention_mask")
    out = np.zeros((subject.n_layers, subject.n_heads))
    for layer in range(subject.n_layers):
        diff = z_src[layer].to(probe.z[layer].device) - probe.z[layer].float()
        prod = diff * probe.probes[layer].grad.float()  # (B, N, H, D)
        if mask is not None:
            prod = prod * mask.to(prod.device, prod.dtype)[:, :, None, None]
        out[layer] = (prod.sum((1, 3)).sum(0) / n).double().cpu().numpy()
    return out

"""The same intervention specs through TransformerLens's bridge hooks and through nnsight module edits.

``apply(subject, *specs)`` (the workbench hook point) already acts inside ``subject.nn.trace``;
these translations are for users who drive the other tools directly and want the same numbers:

- TransformerLens (``subject.bridge``): head-output specs edit ``blocks.{l}.attn.hook_z`` (B, N, H, D);
  ``ZeroQuery`` zeroes the head's slice of ``hook_rot_q`` (B, N, H, D; post-RoPE, as the hook point does) on
  fully rotary models, and of ``hook_q`` (before any rotation; rotation maps 0 to 0) on models with learned
  or partial rotary positions, whose bridge does not run ``hook_rot_q``;
  key knock-out / rescaling edit ``hook_pattern`` (B, H, Nq, Nk): the chosen keys' weights are multiplied
  by 0 / the factor and each row renormalised, which equals adding -inf / log(factor) to their scores
  before the softmax; a row left with no weight becomes 0, as in the workbench hook.
- nnsight (``subject.nn``): head-output specs write the head's slice ``[h*D:(h+1)*D]`` of the output
  projection's input (z before ``o_proj`` / ``c_proj`` / ``dense`` / ``out_proj``, as the architecture names
  it; never the projection's output); ``ZeroQuery`` zeroes the head's query slice of the architecture's
  query source (``q_proj``, a fused ``c_attn`` / ``qkv_proj`` / ``query_key_value``, or OLMo 2's full-width
  ``q_norm``), found at load by checking that zeroing it zeroes exactly that head's query (RoPE and a
  per-head q-norm map 0 to 0). Key edits act on post-softmax internals no module exposes: wrap the trace
  in ``apply(subject, spec)`` for those.
"""

from __future__ import annotations

import contextlib
import torch

from ..errors import InputError
from ..models.architecture import query_slice, resolve
from .hook import expand_heads
from .specs import (AddToHead, KnockOutKeys, ReplaceHead, ScaleHead, ScaleKeys, ZeroHead, ZeroQuery, ZeroValue,
                    key_positions)

Z_SPECS = (ZeroHead, ZeroValue, ScaleHead, ReplaceHead, AddToHead)


def _rows(spec, batch: int):
    if spec.rows is None:
        return slice(None)
    if max(spec.rows) >= batch:
        raise InputError(f"a spec selects batch rows up to {max(spec.rows)} but the batch has {batch} rows")
    return torch.as_tensor(spec.rows)


def _z_value(spec, key, z_slice: torch.Tensor, positions) -> torch.Tensor:
    """The new value of one head's z slice (R, Q, D) under a head-output spec."""
    if isinstance(spec, (ZeroHead, ZeroValue)):
        return torch.zeros_like(z_slice)
    if isinstance(spec, ScaleHead):
        return z_slice * spec.factor
    values = torch.as_tensor(spec.values[key]).to(z_slice.device, z_slice.dtype)
    if values.ndim >= 2:
        values = values[..., positions, :] if values.ndim == 2 else values[:, positions]
    if isinstance(spec, AddToHead):
        return z_slice + spec.factor * values
    return values.expand_as(z_slice)


def _positions(spec, n: int):
    pos = getattr(spec, "positions", None)
    return torch.arange(n) if pos is None else torch.as_tensor([p for p in pos if 0 <= p < n], dtype=torch.long)


def _check_values(spec, heads):
    if isinstance(spec, (ReplaceHead, AddToHead)):
        for key in heads:
            if key not in spec.values:
                raise InputError(f"{type(spec).__name__} has no values for L{key[0]}H{key[1]}")


def edit_head_z(spec, key, z: torch.Tensor) -> torch.Tensor:
    """Apply one head-output spec to one head's output z (B, N, D) of a full (uncached) forward; returns a new tensor."""
    r = _rows(spec, z.shape[0])
    pos = _positions(spec, z.shape[1])
    rr = torch.arange(z.shape[0]) if isinstance(r, slice) else r
    out = z.clone()
    sub = z[rr[:, None], pos[None, :]]
    out[rr[:, None], pos[None, :]] = _z_value(spec, key, sub, pos)
    return out


# ------------------------------------------------------------------------ TransformerLens
def tl_hooks(subject, *specs) -> list[tuple[str, callable]]:
    """TransformerLens ``fwd_hooks`` [(hook name, fn)] that apply ``specs`` to ``subject.bridge`` (same numbers as ``apply``)."""
    hooks = []
    query_hook = "hook_rot_q" if subject.arch.positional == "rope" else "hook_q"
    for spec in specs:
        heads = expand_heads(subject, spec)
        _check_values(spec, heads)
        for layer, head in heads:
            hooks.append(_tl_hook(spec, layer, head, query_hook))
    return hooks


def _tl_hook(spec, layer: int, head: int, query_hook: str):
    key = (layer, head)
    if isinstance(spec, Z_SPECS):
        def fn(z, hook):  # (B, N, H, D)
            z = z.clone()
            z[:, :, head] = edit_head_z(spec, key, z[:, :, head])
            return z
        return f"blocks.{layer}.attn.hook_z", fn
    if isinstance(spec, ZeroQuery):
        def fn(q, hook):  # (B, N, H, D)
            q = q.clone()
            q[_rows(spec, q.shape[0]), :, head] = 0
            return q
        return f"blocks.{layer}.attn.{query_hook}", fn
    if isinstance(spec, (KnockOutKeys, ScaleKeys)):
        factor = 0.0 if isinstance(spec, KnockOutKeys) else spec.factor

        def fn(pattern, hook):  # (B, H, Nq, Nk) post-softmax
            keys = key_positions(spec, pattern.shape[-1])
            pattern = pattern.clone()
            r = _rows(spec, pattern.shape[0])
            rr = torch.arange(pattern.shape[0]) if isinstance(r, slice) else r
            sub = pattern[rr, head]
            sub[:, :, keys] = sub[:, :, keys] * factor
            total = sub.sum(-1, keepdim=True)
            pattern[rr, head] = torch.where(total > 0, sub / total.clamp(min=torch.finfo(sub.dtype).tiny), 0.0)
            return pattern
        return f"blocks.{layer}.attn.hook_pattern", fn
    raise InputError(f"unsupported spec type {type(spec).__name__}")


@contextlib.contextmanager
def tl_apply(subject, *specs):
    """Apply ``specs`` to every forward of ``subject.bridge`` inside the block (TransformerLens hooks, removed on exit)."""
    bridge = subject.bridge
    with bridge.hooks(fwd_hooks=tl_hooks(subject, *specs)):
        yield bridge


# --------------------------------------------------------------------------------- nnsight
def nnsight_edit(subject, *specs) -> None:
    """Inside ``with subject.nn.trace(...)``: apply head-output and query-zero specs as nnsight module edits.

    Edits are requested layer by layer in execution order (query source output, then the output projection's
    input), as nnsight requires. Key knock-out / rescaling raise: use ``apply(subject, spec)`` around the trace.
    """
    per_layer: dict[int, list] = {}
    for spec in specs:
        if isinstance(spec, (KnockOutKeys, ScaleKeys)):
            raise InputError(f"{type(spec).__name__} edits attention scores, which no nnsight module exposes: "
                             "wrap the trace in `with workbench.interventions.apply(subject, spec):` instead")
        if not isinstance(spec, Z_SPECS + (ZeroQuery,)):
            raise InputError(f"unsupported spec type {type(spec).__name__}")
        heads = expand_heads(subject, spec)
        _check_values(spec, heads)
        for layer, head in heads:
            per_layer.setdefault(layer, []).append((spec, head))
    arch, d = subject.arch, subject.d_head
    if any(isinstance(s, ZeroQuery) for s in specs) and arch.query_source is None:
        raise InputError(f"{arch.model_class} exposes no module whose output holds each head's query: "
                         "wrap the trace in `with workbench.interventions.apply(subject, ZeroQuery(...)):` instead")
    if any(not isinstance(s, ZeroQuery) for s in specs) and arch.out_proj_name is None:
        raise InputError(f"{arch.model_class}'s head outputs z do not feed a module directly: wrap the trace in "
                         "`with workbench.interventions.apply(subject, spec):` instead")
    layers = resolve(subject.nn, arch.layers_path)
    for layer in sorted(per_layer):
        attn = getattr(layers[layer], arch.attention_name)
        queries = [(s, h) for s, h in per_layer[layer] if isinstance(s, ZeroQuery)]
        outputs = [(s, h) for s, h in per_layer[layer] if not isinstance(s, ZeroQuery)]
        if queries:
            q = getattr(attn, arch.query_source).output  # (B, N, width) holding every head's query
            for spec, head in queries:
                q[_rows(spec, q.shape[0]), :, query_slice(arch.query_layout, head, d)] = 0
        if outputs:
            x = getattr(attn, arch.out_proj_name).input  # (B, N, H * D): z of every head, before the projection
            for spec, head in outputs:
                x[:, :, head * d:(head + 1) * d] = edit_head_z(spec, (layer, head), x[:, :, head * d:(head + 1) * d])

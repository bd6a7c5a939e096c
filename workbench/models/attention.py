"""The workbench attention implementation: the single hook point for capture and interventions.

Every Subject's HF model runs with ``attn_implementation="workbench"``. With no active hook
the function is transformers' SDPA path unchanged, except on layers SDPA cannot compute exactly:
attention-logit soft-capping (Gemma 2: scores s -> c tanh(s / c)) and sigmoid attention are computed
here in float32 (in query blocks when no hook needs whole patterns), never silently without the cap.
Every variant transformers hands the interface is honoured: grouped/multi-query keys, sliding windows
(per layer), the module's own scaling (Gemma's ``query_pre_attn_scalar``, GPT-2's inverse-layer scaling,
OPT's queries pre-scaled with ``scaling=1``); rotary (full or partial), QK-norm, projection biases and
learned absolute positions act before the call, so ``query``/``key`` arrive exactly as the model uses
them. Which models route attention here at all is checked at load (``workbench.models.architecture``).
Hooks (``AttentionHook`` subclasses pushed
with :func:`hooks_active`) can, per layer and per query head:

1. edit the queries (``edit_query``; e.g. query zeroing = uniform attention, Wu et al. 2024),
2. edit the pre-softmax scores (``edit_scores``; knock-out or rescaling of keys), which switches
   that layer to an exact float32 eager computation,
3. observe exact post-softmax patterns of chosen heads (``pattern_heads`` / ``on_pattern``),
4. observe the post-RoPE queries and keys (``on_qk``; streamed statistics from the kernels) and the
   values (``on_value``; attribution screening recomputes a head's attention from them),
5. edit or observe each head's output ``z`` before the output projection (``o_proj``, ``c_proj``, ``dense``, ...;
   ``edit_z`` / ``on_z``), so no intervention depends on the projection's name.

A module may declare ``attention_activation = "sigmoid"`` (the workbench's toy models do): its attention is
then elementwise sigmoid of the scaled scores plus the module's constant ``attention_bias`` (default 0), with no
normalisation over keys (Gu et al. 2024; Ramapuram et al. 2024 use bias -log n), computed exactly in float32,
and hooks observe and edit it the same way (scores exclude the bias; patterns are the sigmoid weights).

Captures (``workbench.patterns``) and interventions (``workbench.interventions``) are hooks;
no analysis writes its own module hooks.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from dataclasses import dataclass, field

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

IMPLEMENTATION = "workbench"


@dataclass
class AttentionCall:
    """What a hook sees of one attention call: the layer, shapes, scaling and visibility."""

    layer: int
    n_heads: int
    n_kv_heads: int
    n_queries: int
    n_keys: int
    scaling: float
    window: int | None
    softcap: float | None
    visible: torch.Tensor | None  # bool (B|1, 1, Nq, Nk), True = query may attend; None = plain causal
    activation: str = "softmax"  # or "sigmoid": unnormalised sigmoid attention
    module: object = field(default=None, repr=False, compare=False)  # the HF attention module making the call

    @property
    def group(self) -> int:
        """Query heads per key/value head."""
        return self.n_heads // self.n_kv_heads

    def visibility(self, device) -> torch.Tensor:
        """The bool (B|1, 1, Nq, Nk) mask of visible keys (causal, end-aligned, sliding window)."""
        if self.visible is not None:
            return self.visible.to(device)
        return causal_visibility(self.n_queries, self.n_keys, self.window, device)


class AttentionHook:
    """Base class: override only what the hook needs. ``layers=None`` means every layer."""

    layers: frozenset[int] | None = None

    def applies(self, layer: int) -> bool:
        return self.layers is None or layer in self.layers

    def edit_query(self, call: AttentionCall, query: torch.Tensor) -> torch.Tensor:
        return query

    def edits_scores(self, call: AttentionCall) -> bool:
        return False

    def edit_scores(self, call: AttentionCall, scores: torch.Tensor) -> torch.Tensor:
        return scores

    def pattern_heads(self, call: AttentionCall) -> list[int]:
        return []

    def on_pattern(self, call: AttentionCall, heads: list[int], pattern: torch.Tensor) -> None:
        """``pattern``: float32 (B, len(heads), Nq, Nk) post-softmax attention of those heads."""

    def on_qk(self, call: AttentionCall, query: torch.Tensor, key: torch.Tensor) -> None:
        """``query`` (B, H, Nq, D) and ``key`` (B, Hkv, Nk, D), RoPE applied, after query edits."""

    def on_value(self, call: AttentionCall, value: torch.Tensor) -> None:
        """``value`` (B, Hkv, Nk, D): the value vectors the heads read (query head h reads ``h // call.group``)."""

    def edit_z(self, call: AttentionCall, z: torch.Tensor) -> torch.Tensor:
        """``z``: (B, Nq, H, D) per-head attention output before the output projection."""
        return z

    def on_z(self, call: AttentionCall, z: torch.Tensor) -> None:
        pass


_ACTIVE: contextvars.ContextVar[tuple[AttentionHook, ...]] = contextvars.ContextVar("workbench_hooks", default=())


@contextlib.contextmanager
def hooks_active(*hooks: AttentionHook, only: bool = False):
    """Make ``hooks`` active for every workbench-attention forward pass inside the block (nestable; a hook already
    active is not added twice); ``only=True`` deactivates the enclosing blocks' hooks inside this one."""
    current = () if only else _ACTIVE.get()
    token = _ACTIVE.set(current + tuple(h for h in hooks if not any(h is c for c in current)))
    try:
        yield hooks
    finally:
        _ACTIVE.reset(token)


def active_hooks() -> tuple[AttentionHook, ...]:
    """The hooks active in this context, outermost first."""
    return _ACTIVE.get()


def causal_visibility(n_queries: int, n_keys: int, window: int | None, device) -> torch.Tensor:
    """Bool (1, 1, Nq, Nk): query i (absolute position i + Nk - Nq) sees key j iff j <= pos and pos - j < window."""
    pos = torch.arange(n_keys - n_queries, n_keys, device=device)[:, None]
    key = torch.arange(n_keys, device=device)[None, :]
    visible = key <= pos
    if window is not None:
        visible &= key > pos - window
    return visible[None, None]


def _as_visibility(mask: torch.Tensor | None) -> torch.Tensor | None:
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return mask
    return mask > torch.finfo(mask.dtype).min / 2  # additive float mask: 0 visible, -inf/min hidden


def exact_scores(call: AttentionCall, query: torch.Tensor, key: torch.Tensor, heads=None) -> torch.Tensor:
    """Float32 scaled scores (B, h, Nq, Nk) for query heads ``heads`` (all if None), soft-capped, -inf where hidden."""
    if heads is not None:
        idx = torch.as_tensor(heads, device=query.device)
        query = query[:, idx]
        key = key[:, idx // call.group]
    else:
        key = key.repeat_interleave(call.group, dim=1)
    scores = torch.matmul(query.float(), key.float().transpose(-1, -2)) * call.scaling
    if call.softcap is not None:
        scores = torch.tanh(scores / call.softcap) * call.softcap
    return scores.masked_fill(~call.visibility(query.device), -math.inf)


def softmax_rows(scores: torch.Tensor) -> torch.Tensor:
    """Softmax over keys; rows with no visible key (padding queries) become all zeros, not NaN."""
    return torch.softmax(scores, dim=-1).nan_to_num(0.0)


def attention_weights(scores: torch.Tensor, activation: str = "softmax", bias: float = 0.0) -> torch.Tensor:
    """Attention weights from scores (-inf where hidden): softmax rows, or elementwise sigmoid(scores + bias) (0 where hidden)."""
    return torch.sigmoid(scores + bias) if activation == "sigmoid" else softmax_rows(scores)


EXACT_BLOCK_BYTES = 256 << 20  # float32 scores held at once when an exact layer runs in query blocks


def _blocked_exact_z(call: AttentionCall, query, key, value, bias: float) -> torch.Tensor:
    """Exact float32 attention output (B, H, Nq, D) computed over query blocks, so no N x N tensor of all rows exists."""
    visible = call.visibility(query.device)
    values = value.float().repeat_interleave(call.group, dim=1)
    keys = key.float().repeat_interleave(call.group, dim=1).transpose(-1, -2)
    per_row = query.shape[0] * query.shape[1] * call.n_keys * 4 * 2
    step = max(1, EXACT_BLOCK_BYTES // max(per_row, 1))
    out = []
    for i in range(0, call.n_queries, step):
        scores = torch.matmul(query[:, :, i:i + step].float(), keys) * call.scaling
        if call.softcap is not None:
            scores = torch.tanh(scores / call.softcap) * call.softcap
        scores = scores.masked_fill(~visible[:, :, i:i + step], -math.inf)
        out.append(torch.matmul(attention_weights(scores, call.activation, bias), values))
    return torch.cat(out, dim=2)


def workbench_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None,
                        sliding_window=None, softcap=None, **kwargs):
    """Attention of one layer (SDPA, or exact float32 where SDPA cannot be exact), with the active hooks' edits and
    observations applied for this layer."""
    if kwargs.get("s_aux") is not None:
        from ..errors import UnsupportedModelError

        raise UnsupportedModelError(
            f"{type(module).__name__} adds learned attention sinks (s_aux) to the softmax, which the workbench "
            "hook point does not compute: this architecture is not supported (see docs/architectures.md)")
    layer = getattr(module, "layer_idx", None)
    hooks = [h for h in _ACTIVE.get() if layer is not None and h.applies(layer)]
    activation = getattr(module, "attention_activation", "softmax")
    if not hooks and activation == "softmax" and softcap is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    window = sliding_window if sliding_window is not None else getattr(module, "sliding_window", None)
    call = AttentionCall(layer=layer, n_heads=query.shape[1], n_kv_heads=key.shape[1],
                         n_queries=query.shape[2], n_keys=key.shape[2], scaling=scaling,
                         window=window, softcap=softcap, visible=_as_visibility(attention_mask),
                         activation=activation, module=module)
    for hook in hooks:
        query = hook.edit_query(call, query)

    bias = getattr(module, "attention_bias", 0.0) if activation != "softmax" else 0.0
    wanted_by = [(hook, hook.pattern_heads(call)) for hook in hooks]
    edits = any(hook.edits_scores(call) for hook in hooks)
    if activation != "softmax" or softcap is not None or edits:
        if not edits and not any(heads for _, heads in wanted_by):
            z = _blocked_exact_z(call, query, key, value, bias).to(query.dtype).transpose(1, 2)
        else:
            scores = exact_scores(call, query, key)
            for hook in hooks:
                scores = hook.edit_scores(call, scores)
            pattern = attention_weights(scores, activation, bias)
            values = value.float().repeat_interleave(call.group, dim=1)
            z = torch.matmul(pattern, values).to(query.dtype).transpose(1, 2)
            all_heads = list(range(call.n_heads))
            for hook, wanted in wanted_by:
                if wanted:
                    hook.on_pattern(call, wanted, pattern[:, wanted] if wanted != all_heads else pattern)
    else:
        z, _ = sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
        union = sorted({h for _, heads in wanted_by for h in heads})
        if union:
            pattern = softmax_rows(exact_scores(call, query, key, union))
            where = {h: i for i, h in enumerate(union)}
            for hook, heads in wanted_by:
                if heads:
                    hook.on_pattern(call, heads, pattern[:, [where[h] for h in heads]])
    for hook in hooks:
        hook.on_qk(call, query, key)
    for hook in hooks:
        hook.on_value(call, value)
    for hook in hooks:
        z = hook.edit_z(call, z)
    for hook in hooks:
        hook.on_z(call, z)
    return z.contiguous(), None


def register() -> None:
    """Register the workbench attention (and its mask format, SDPA's) with transformers (idempotent)."""
    AttentionInterface.register(IMPLEMENTATION, workbench_attention)
    AttentionMaskInterface.register(IMPLEMENTATION, sdpa_mask)

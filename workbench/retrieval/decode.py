"""Greedy decoding with the KV cache, recording each head's top-1 key at every step (Wu et al. 2024's loop).

As in the authors' code, the prompt minus its last token is prefilled once (``workbench.models.decoding.prefill``);
each decoding step feeds
one token, so the attention call of every layer has a single query, and :class:`TopKeyRecorder`
(an ``on_pattern`` hook on the workbench attention) keeps the arg-max key of every head. One prefill
serves several decoding runs (e.g. intact and with heads masked): the cache is copied per run.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from ..errors import InputError
from ..interventions import ZeroQuery, apply
from ..models.attention import AttentionCall, AttentionHook, hooks_active
from ..models.decoding import Prefilled, StopTokens, response_text
from ..patterns.memory import ModelDims, Prediction, forward_peak


class TopKeyRecorder(AttentionHook):
    """The top-1 attended key (absolute position) of every query head for single-query (decoding) calls.

    Set ``position`` to the query's absolute position before each step: a sliding-window layer's
    cache holds only its last keys, so the call's key index j maps to ``position + 1 - n_keys + j``.
    """

    def __init__(self, n_layers: int, n_heads: int):
        self.n_layers, self.n_heads = n_layers, n_heads
        self.position = 0
        self.current: dict[int, torch.Tensor] = {}

    def pattern_heads(self, call: AttentionCall) -> list[int]:
        return list(range(call.n_heads)) if call.n_queries == 1 else []

    def on_pattern(self, call, heads, pattern):
        offset = self.position + 1 - call.n_keys  # keys are end-aligned with the query
        self.current[call.layer] = pattern[:, :, -1].argmax(-1) + offset  # ties: the lowest key index

    def take(self) -> torch.Tensor:
        """(B, L, H) top-1 key positions of the last step (-1 for layers not seen); clears the step."""
        batch = next(iter(self.current.values())).shape[0]
        out = torch.full((batch, self.n_layers, self.n_heads), -1, dtype=torch.long)
        for layer, top in self.current.items():
            out[:, layer] = top.cpu()
        self.current = {}
        return out


@dataclass
class Decoded:
    """Greedy continuations of one batch: per row the generated ids up to and including the stop token."""

    tokens: list[list[int]]
    texts: list[str]
    top_keys: list[torch.Tensor] | None  # per row (T_row, L, H) top-1 key positions, or None


def predict_decoding(dims: ModelDims, batch: int, n_tokens: int, max_new_tokens: int, *,
                     device_type: str = "cpu") -> Prediction:
    """Peak memory of one batch of prompts (B x N) through ``prefill`` and ``decode``: the larger of the prefill
    (activations of N - 1 tokens and the KV cache it fills) and the decoding (the prefilled cache, the copy that
    ``decode`` grows by ``max_new_tokens``, one layer's cache while it is extended, one token's activations)."""
    pre = forward_peak(dims, batch, n_tokens - 1, device_type=device_type, n_logits=1, cache=True)
    total = n_tokens + max_new_tokens
    full = dims.n_layers - dims.sliding_layers
    per_layer = [min(total, dims.window or total)] * dims.sliding_layers + [total] * full
    cache = 2 * batch * sum(per_layer) * dims.kv_width * dims.act_bytes
    layer = 2 * batch * max(per_layer) * dims.kv_width * dims.act_bytes
    dec = forward_peak(dims, batch, 1, device_type=device_type, n_logits=1, kept=0,
                       layer_extra=2 * cache + layer)  # decoding holds the caches on the compute device
    return pre if pre.peak >= dec.peak else dec


@torch.no_grad()
def decode(subject, state: Prefilled, max_new_tokens: int = 50, stop_at_newline: bool = True,
           mask_heads=(), record: bool = False) -> Decoded:
    """Greedy decoding from a prefilled batch (its cache is copied, not consumed); query-zeroing ``mask_heads`` on the decoded tokens; top-1 keys if ``record``."""
    if max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    n_prompt = state.input_ids.shape[1]
    if n_prompt + max_new_tokens > subject.context_limit:
        raise InputError(f"{n_prompt} prompt tokens + {max_new_tokens} new ones exceed {subject.name}'s context of "
                         f"{subject.context_limit}: use shorter prompts or fewer new tokens")
    cache = copy.deepcopy(state.cache)
    batch = state.input_ids.shape[0]
    recorder = TopKeyRecorder(subject.n_layers, subject.n_heads) if record else None
    specs = [ZeroQuery(list(mask_heads))] if mask_heads else []
    tokens: list[list[int]] = [[] for _ in range(batch)]
    tops: list[list[torch.Tensor]] = [[] for _ in range(batch)]
    done = [False] * batch
    stops = StopTokens(subject, stop_at_newline)
    inp = state.input_ids[:, -1:]
    hooks = [recorder] if recorder else []
    with apply(subject, *specs), hooks_active(*hooks):
        for step in range(max_new_tokens):
            if recorder:
                recorder.position = n_prompt - 1 + step
            out = subject.model(input_ids=inp, past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            nxt = out.logits[:, -1].argmax(-1)
            step_tops = recorder.take() if recorder else None
            for row, token in enumerate(nxt.tolist()):
                if done[row]:
                    continue
                tokens[row].append(token)
                if step_tops is not None:
                    tops[row].append(step_tops[row])
                done[row] = stops(token)
            if all(done):
                break
            inp = nxt[:, None]
    texts = [response_text(subject, t, stop_at_newline) for t in tokens]
    top_keys = [torch.stack(t) for t in tops] if record else None
    return Decoded(tokens, texts, top_keys)

"""DeCoRe contrastive decoding (Gema et al. 2024, "DeCoRe: Decoding by Contrasting Retrieval Heads").

Two runs share the prompt's KV cache: the base model, and the same model with the given (retrieval) heads
masked by query zeroing (``ZeroQuery``: uniform attention, Wu et al. 2024's masking, as ``workbench.retrieval``
uses). As in METHODS.md §9 the heads are masked only for the decoded tokens (the prompt minus its last token is
prefilled once, unmasked, by ``workbench.models.decoding.prefill``; the cache is copied per run). The
next-token score is ``(1 + alpha) log p_base - alpha log p_masked`` (= ``(1 + alpha) base - alpha masked`` on
logits up to a per-step constant, so the greedy choice is the same); ``alpha="entropy"`` is the paper's
entropy variant, alpha_t = H(p_base) in nats (optionally capped at ``alpha_cap``). Greedy decoding.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from ..errors import InputError
from ..interventions import ZeroQuery, apply
from ..models.decoding import StopTokens, prefill


def contrastive_scores(base_logits: torch.Tensor, masked_logits: torch.Tensor, alpha) -> torch.Tensor:
    """DeCoRe's next-token scores (1 + alpha) log p_base - alpha log p_masked (alpha a number or a (B,) tensor)."""
    base, masked = base_logits.float().log_softmax(-1), masked_logits.float().log_softmax(-1)
    alpha = torch.as_tensor(alpha, dtype=base.dtype, device=base.device)
    alpha = alpha[..., None] if alpha.ndim else alpha
    return (1 + alpha) * base - alpha * masked


def entropy_alpha(base_logits: torch.Tensor, cap: float | None = None) -> torch.Tensor:
    """DeCoRe-entropy's alpha_t: the entropy (nats) of the base next-token distribution, optionally capped."""
    lp = base_logits.float().log_softmax(-1)
    h = -(lp.exp() * lp).sum(-1)
    return h.clamp(max=cap) if cap is not None else h


@dataclass
class Contrasted:
    """A DeCoRe continuation: the generated ids and text, and alpha at each step."""

    tokens: list[int]
    text: str
    alphas: list[float]


@torch.no_grad()
def contrastive_generate(subject, prompt, heads, alpha=0.5, max_new_tokens: int = 20, stop_at_newline: bool = False,
                         alpha_cap: float | None = None) -> Contrasted:
    """Greedy decoding on DeCoRe scores (1 + alpha) log p_base - alpha log p_masked, ``heads`` query-zeroed in the
    masked run on the decoded tokens; ``alpha`` a number or "entropy" (alpha_t = H(p_base), Gema et al. 2024)."""
    if max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if not (alpha == "entropy" or isinstance(alpha, (int, float))):
        raise InputError(f"alpha must be a number or 'entropy', got {alpha!r}")
    heads = [tuple(h) for h in heads]
    if not heads:
        raise InputError("give at least one head to mask, as [(layer, head), ...]")
    ids = subject.encode(prompt) if isinstance(prompt, str) else torch.as_tensor(prompt)
    ids = ids[None] if ids.ndim == 1 else ids
    if ids.shape[0] != 1:
        raise InputError("contrastive_generate decodes one prompt at a time")
    subject.check_length(ids.shape[1] + max_new_tokens)
    state = prefill(subject, ids)
    caches = [copy.deepcopy(state.cache), copy.deepcopy(state.cache)]
    mask = ZeroQuery(heads)
    inp = state.input_ids[:, -1:]
    tokens, alphas, stops = [], [], StopTokens(subject, stop_at_newline)
    for _ in range(max_new_tokens):
        base = subject.model(input_ids=inp, past_key_values=caches[0], use_cache=True)
        with apply(subject, mask):
            masked = subject.model(input_ids=inp, past_key_values=caches[1], use_cache=True)
        caches = [base.past_key_values, masked.past_key_values]
        a = entropy_alpha(base.logits[:, -1], alpha_cap) if alpha == "entropy" else torch.tensor([float(alpha)])
        token = int(contrastive_scores(base.logits[:, -1], masked.logits[:, -1], a).argmax(-1)[0])
        tokens.append(token)
        alphas.append(float(a[0]))
        if stops(token):
            break
        inp = torch.tensor([[token]], device=inp.device)
    text = subject.tokenizer.decode(tokens, skip_special_tokens=True)
    return Contrasted(tokens, text.split("\n")[0] if stop_at_newline else text, alphas)

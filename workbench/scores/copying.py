"""Copying score (after Olsson et al. 2022): does a head's direct logit effect raise the tokens it attends to?"""

from __future__ import annotations

import torch


def copying_score(direct_logits: torch.Tensor, pattern: torch.Tensor, input_ids: torch.Tensor,
                  first_key: int = 1, top_keys: int = 8) -> torch.Tensor:
    """Mean over sequences and queries of ``copying_items``: the copying score of a head; [-1, 1]."""
    return copying_items(direct_logits, pattern, input_ids, first_key, top_keys).mean(-1)


def copying_items(direct_logits: torch.Tensor, pattern: torch.Tensor, input_ids: torch.Tensor,
                  first_key: int = 1, top_keys: int = 8) -> torch.Tensor:
    """Per sequence (..., B): attention-weighted mean of 2*percentile - 1 of the attended tokens' direct logits within the vocabulary; [-1, 1].

    direct_logits: (..., B, Q, V) the head's direct effect on the logits at Q query positions
    (W_U diag(g) W_O z; the final norm's 1/rms is a positive factor per position and does not change
    ranks); pattern: (..., B, Q, Nk) the head's attention from those queries; input_ids: (B, Nk).
    For each attended key j >= ``first_key`` (BOS excluded; attention renormalised over those keys) the
    percentile of d[tok_j] among all V logits (ties counted half) is mapped to [-1, 1], over the ``top_keys``
    most attended keys per query (attention renormalised over them): +1 when the head
    raises exactly what it attends to above every other token, 0 for no relation, -1 for suppression.
    Deviation, documented: Olsson et al. use the share of the mean-subtracted, ReLU'd logit raise that
    lands on the attended tokens; at a 49k vocabulary in a 30-layer model that share is near 0 (score
    near -1) for every head, including heads whose direct effect ranks the attended token in the top 0.1%.
    """
    logits = direct_logits.float()
    ranked, _ = logits.sort(dim=-1)
    attn = pattern[..., first_key:].float()
    weight, key_idx = attn.topk(min(top_keys, attn.shape[-1]), dim=-1)
    weight = weight / weight.sum(-1, keepdim=True).clamp_min(1e-30)
    tokens = input_ids[:, None, first_key:].expand(*attn.shape).gather(-1, key_idx)
    on_keys = logits.gather(-1, tokens).contiguous()  # (..., B, Q, k)
    below = torch.searchsorted(ranked, on_keys, right=False)
    not_above = torch.searchsorted(ranked, on_keys, right=True)
    percentile = (below + not_above).float() / (2 * logits.shape[-1])
    return (weight * (2 * percentile - 1)).sum(-1).mean(-1)

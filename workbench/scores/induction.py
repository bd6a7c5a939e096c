"""Previous-token, duplicate-token and induction (prefix-matching) scores from attention patterns.

Patterns have shape (..., B, Nq, Nk) with the batch as the third-last axis. Each ``*_items`` function
returns the score per sequence, (..., B), with the number of queries each sequence contributes, (B,);
the score itself is the mean over all selected queries of the batch, i.e. ``item_mean`` of those
(returned with shape (...), e.g. (layers, heads)). The sequences are the items a confidence interval
resamples (``workbench.scores.intervals``).
"""

from __future__ import annotations

import torch


def item_mean(values: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """The pooled mean over items: sum_b counts[b] * values[..., b] / sum_b counts[b]; values (..., B), counts (B,)."""
    counts = counts.to(values.dtype)
    return (values * counts).sum(-1) / counts.sum()


def target_mass_items(patterns: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sequence: mean over its queries with a target (targets >= 0) of A[i, targets[i]] (..., B), and that query count (B,); targets: (B, Nq) key indices."""
    targets = targets.to(patterns.device)
    valid = targets >= 0
    if not bool(valid.any()):
        raise ValueError("no query has a target: nothing to score")
    gathered = patterns.gather(-1, targets.clamp(min=0)[..., None].expand(*patterns.shape[:-1], 1))[..., 0]
    counts = valid.sum(-1)
    return (gathered * valid).sum(-1) / counts.clamp(min=1), counts


def target_mass(patterns: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over queries with a target (targets >= 0) of A[i, targets[i]]; targets: (B, Nq) key indices."""
    return item_mean(*target_mass_items(patterns, targets))


def previous_token_items(patterns: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sequence: mean A[i, i-1] over queries i >= 1 (..., B), and the query count (B,)."""
    n_q, n_k = patterns.shape[-2:]
    pos = torch.arange(n_k - n_q, n_k, device=patterns.device)
    targets = (pos - 1).expand(patterns.shape[-3], n_q)
    return target_mass_items(patterns, targets)


def previous_token_score(patterns: torch.Tensor) -> torch.Tensor:
    """Mean A[i, i-1] over queries i >= 1 (previous-token heads); range [0, 1]."""
    return item_mean(*previous_token_items(patterns))


def induction_items(patterns: torch.Tensor, induction_target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sequence: the prefix-matching score (..., B), and its query count (B,)."""
    return target_mass_items(patterns, induction_target)


def induction_score(patterns: torch.Tensor, induction_target: torch.Tensor) -> torch.Tensor:
    """Prefix-matching score (Olsson et al. 2022): mean attention from repeat tokens to the key after their previous occurrence; [0, 1]."""
    return item_mean(*induction_items(patterns, induction_target))


def duplicate_token_items(patterns: torch.Tensor, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sequence: mean over queries with an earlier copy of their token of the mass on those copies (..., B), and that query count (B,)."""
    n_q, n_k = patterns.shape[-2:]
    input_ids = input_ids.to(patterns.device)
    q_ids = input_ids[:, n_k - n_q:]
    same = q_ids[:, :, None] == input_ids[:, None, :]  # (B, Nq, Nk)
    pos_q = torch.arange(n_k - n_q, n_k, device=patterns.device)[:, None]
    earlier = same & (torch.arange(n_k, device=patterns.device)[None, :] < pos_q)
    has_copy = earlier.any(-1)
    if not bool(has_copy.any()):
        raise ValueError("no query token occurs earlier in its sequence: nothing to score")
    mass = (patterns * earlier).sum(-1)
    counts = has_copy.sum(-1)
    return (mass * has_copy).sum(-1) / counts.clamp(min=1), counts


def duplicate_token_score(patterns: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Mean over queries with an earlier copy of their token of the attention mass on those copies; [0, 1]."""
    return item_mean(*duplicate_token_items(patterns, input_ids))

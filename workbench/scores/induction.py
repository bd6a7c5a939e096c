"""Previous-token, duplicate-token and induction (prefix-matching) scores from attention patterns.

Patterns have shape (..., B, Nq, Nk) with the batch as the third-last axis; each score is the mean
over the batch and the selected query positions, returned with shape (...) (e.g. (layers, heads)).
"""

from __future__ import annotations

import torch


def target_mass(patterns: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over queries with a target (targets >= 0) of A[i, targets[i]]; targets: (B, Nq) key indices."""
    targets = targets.to(patterns.device)
    valid = targets >= 0
    if not bool(valid.any()):
        raise ValueError("no query has a target: nothing to score")
    gathered = patterns.gather(-1, targets.clamp(min=0)[..., None].expand(*patterns.shape[:-1], 1))[..., 0]
    return (gathered * valid).sum((-1, -2)) / valid.sum()


def previous_token_score(patterns: torch.Tensor) -> torch.Tensor:
    """Mean A[i, i-1] over queries i >= 1 (previous-token heads); range [0, 1]."""
    n_q, n_k = patterns.shape[-2:]
    pos = torch.arange(n_k - n_q, n_k, device=patterns.device)
    targets = (pos - 1).expand(patterns.shape[-3], n_q)
    return target_mass(patterns, targets)


def induction_score(patterns: torch.Tensor, induction_target: torch.Tensor) -> torch.Tensor:
    """Prefix-matching score (Olsson et al. 2022): mean attention from repeat tokens to the key after their previous occurrence; [0, 1]."""
    return target_mass(patterns, induction_target)


def duplicate_token_score(patterns: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Mean over queries with an earlier copy of their token of the attention mass on those copies; [0, 1]."""
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
    return (mass * has_copy).sum((-1, -2)) / has_copy.sum()

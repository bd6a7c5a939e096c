"""``ToyBatch``: one batch of synthetic training sequences with the positions that are targets."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class ToyBatch:
    """``input_ids`` (B, N); ``loss_mask`` (B, N) bool: position t is a training target (predicted at t-1);
    ``segments`` {name: (B, N) bool}: target positions reported separately; ``info``: what was generated."""

    input_ids: torch.Tensor
    loss_mask: torch.Tensor
    segments: dict[str, torch.Tensor] = field(default_factory=dict)
    info: dict = field(default_factory=dict)

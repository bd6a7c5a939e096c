"""Interventions: declarative per-head specs applied through the workbench attention hook."""

from .hook import InterventionHook, apply, expand_heads
from .specs import (KnockOutKeys, ReplaceHead, ScaleHead, ScaleKeys, ZeroHead, ZeroQuery, ZeroValue,
                    mean_values)

__all__ = ["InterventionHook", "KnockOutKeys", "ReplaceHead", "ScaleHead", "ScaleKeys", "ZeroHead",
           "ZeroQuery", "ZeroValue", "apply", "expand_heads", "mean_values"]

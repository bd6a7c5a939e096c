"""Interventions: declarative per-head specs applied through the workbench attention hook (or TransformerLens /
nnsight, same numbers), and activation / path / attribution patching."""

from .frontends import nnsight_edit, tl_apply, tl_hooks
from .hook import InterventionHook, apply, expand_heads
from .patching import activation_patching, attribution_patching, head_z, path_patching
from .specs import (AddToHead, KnockOutKeys, ReplaceHead, ScaleHead, ScaleKeys, ZeroHead, ZeroQuery, ZeroValue,
                    mean_values)

__all__ = ["AddToHead", "InterventionHook", "KnockOutKeys", "ReplaceHead", "ScaleHead", "ScaleKeys", "ZeroHead",
           "ZeroQuery", "ZeroValue", "activation_patching", "apply", "attribution_patching", "expand_heads",
           "head_z", "mean_values", "nnsight_edit", "path_patching", "tl_apply", "tl_hooks"]

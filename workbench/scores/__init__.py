"""Per-head scores: pure functions from captured tensors to numbers (no model calls)."""

from .copying import copying_score
from .induction import duplicate_token_score, induction_score, previous_token_score, target_mass
from .sinks import key_importance, sink_rate

__all__ = ["copying_score", "duplicate_token_score", "induction_score", "key_importance",
           "previous_token_score", "sink_rate", "target_mass"]

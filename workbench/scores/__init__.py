"""Per-head scores: pure functions from captured tensors to numbers (no model calls), their per-item values, and
bootstrap intervals over those items (``intervals``)."""

from .copying import copying_items, copying_score
from .induction import (duplicate_token_items, duplicate_token_score, induction_items, induction_score, item_mean,
                        previous_token_items, previous_token_score, target_mass, target_mass_items)
from .intervals import Bootstrap, ItemScores, bootstrap_interval
from .sinks import key_importance, sink_items, sink_rate

__all__ = ["Bootstrap", "ItemScores", "bootstrap_interval", "copying_items", "copying_score", "duplicate_token_items",
           "duplicate_token_score", "induction_items", "induction_score", "item_mean", "key_importance",
           "previous_token_items", "previous_token_score", "sink_items", "sink_rate", "target_mass",
           "target_mass_items"]

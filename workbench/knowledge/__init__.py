"""Memory vs context: which heads carry parametric knowledge against the prompt (PH3-style contributions and
pruning) and DeCoRe contrastive decoding with those heads masked."""

from .contrastive import Contrasted, contrastive_generate, contrastive_scores, entropy_alpha
from .memory_context import (PruningResult, conflict_diff, following, head_contributions, pruning_experiment,
                             split_items, top_heads)

__all__ = ["Contrasted", "PruningResult", "conflict_diff", "contrastive_generate", "contrastive_scores",
           "entropy_alpha", "following", "head_contributions", "pruning_experiment", "split_items", "top_heads"]

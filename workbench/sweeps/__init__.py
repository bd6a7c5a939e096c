"""Head-ablation sweeps: cells (heads, groups, pairs) x a task's prompts x metrics, batched, resumable."""

from .ablations import ABLATIONS, Ablation, Mean, Patch, Resample, Zero, ZeroQueries, get_ablation
from .engine import CellEvaluator, baseline_values, cell_name, evaluate_cells, parse_heads
from .runner import (ChunkWorker, SweepPlan, head_pairs, kv_groups, layer_groups, load_sweep, run_sweep,
                     single_heads)
from .screen import HeadEstimates, method_name, screen_heads, verification_cells

__all__ = ["ABLATIONS", "Ablation", "CellEvaluator", "ChunkWorker", "Mean", "Patch", "Resample", "SweepPlan", "Zero",
           "ZeroQueries", "baseline_values", "cell_name", "evaluate_cells", "get_ablation", "head_pairs", "kv_groups",
           "layer_groups", "load_sweep", "method_name", "parse_heads", "run_sweep", "screen_heads",
           "single_heads", "HeadEstimates", "verification_cells"]

"""Attention statistics on long contexts without N x N matrices: Triton kernels and their PyTorch references.

Imports only torch (triton is imported when the Triton backend runs).
"""

from workbench.kernels.api import attention_stats
from workbench.kernels.reference import attention_rows, reference_attention_stats
from workbench.kernels.request import AttentionStatsRequest, log_lag_edges

__all__ = ["AttentionStatsRequest", "attention_rows", "attention_stats", "log_lag_edges",
           "reference_attention_stats"]
